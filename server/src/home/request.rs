//! A request being handled, with the addresses it names parsed at most once each: the fetch of
//! its users, the check for users being moved and its handler all read them (a MESSAGE's sender
//! and target were each parsed twice or three times, a REGISTER's To twice).

use crate::sip::Message;
use crate::sip::uri::{NameAddr, SipUri};
use std::cell::OnceCell;
use std::ops::Deref;

pub(super) struct Request {
    message: Message,
    from: OnceCell<Result<NameAddr, String>>,
    to: OnceCell<Result<NameAddr, String>>,
    target: OnceCell<Result<SipUri, String>>,
}

impl Request {
    pub fn new(message: Message) -> Request {
        Request { message, from: OnceCell::new(), to: OnceCell::new(), target: OnceCell::new() }
    }

    /// The From header, or why it does not parse.
    pub fn parsed_from(&self) -> Result<&NameAddr, &str> {
        self.from.get_or_init(|| self.name_addr("From")).as_ref().map_err(String::as_str)
    }

    /// The To header, or why it does not parse.
    pub fn parsed_to(&self) -> Result<&NameAddr, &str> {
        self.to.get_or_init(|| self.name_addr("To")).as_ref().map_err(String::as_str)
    }

    /// The Request-URI, or why it does not parse.
    pub fn parsed_uri(&self) -> Result<&SipUri, &str> {
        self.target
            .get_or_init(|| SipUri::parse(self.message.request_uri().unwrap_or_default()))
            .as_ref()
            .map_err(String::as_str)
    }

    fn name_addr(&self, header: &str) -> Result<NameAddr, String> {
        NameAddr::parse(self.message.headers.get(header).unwrap_or_default())
    }
}

/// Read as the message it is: the parsed addresses only add to it.
impl Deref for Request {
    type Target = Message;

    fn deref(&self) -> &Message {
        &self.message
    }
}
