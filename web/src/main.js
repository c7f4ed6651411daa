// Parley's web client: SIP over WebSocket with JsSIP. Signs in (REGISTER), watches the user's
// server-side contact list (SUBSCRIBE to <user>+contacts, RFC 4662 lists of PIDF documents),
// publishes the user's own status (PUBLISH of PIDF), and chats (MESSAGE), with messages kept by
// the server while the user was away shown with the time they were sent (their Date header).

import * as JsSIP from 'jssip';
import SIPMessage from 'jssip/lib/SIPMessage';
import RequestSender from 'jssip/lib/RequestSender';

const $ = (id) => document.getElementById(id);
const STATUS_TEXT = { available: 'Available', away: 'Away', busy: 'Busy', offline: 'Offline' };

const state = {
  config: null,
  ua: null,
  me: null, // alice@example.test
  signedIn: false,
  connectedOnce: false,
  signingOut: false,
  subscriber: null,
  etag: null,
  publishTimer: null,
  publishing: false,
  republish: null,
  contacts: new Map(), // address -> { status, note }
  chats: new Map(), // address -> [{ dir, text, at, meta, failed }]
  unread: new Map(), // address -> count
  current: null,
};

async function loadConfig() {
  if (state.config) return state.config;
  const r = await fetch('config.json', { cache: 'no-store' });
  if (!r.ok) throw new Error(`config.json: ${r.status}`);
  state.config = await r.json();
  return state.config;
}

function webSocketUrl(cfg) {
  const params = new URLSearchParams(location.search);
  const forced = params.get('transport'); // "ws" or "wss"
  const secure = forced ? forced === 'wss' : location.protocol === 'https:' || !cfg.ws;
  const port = secure ? cfg.wss : cfg.ws;
  if (!port) throw new Error(`this server offers no ${secure ? 'wss' : 'ws'} listener`);
  const host = location.hostname.includes(':') ? `[${location.hostname}]` : location.hostname;
  return `${secure ? 'wss' : 'ws'}://${host}:${port}`;
}

function setConnection(text, bad = false) {
  const el = $('connection');
  el.textContent = text;
  el.classList.toggle('bad', bad);
}

function signinError(text) {
  $('signin-error').textContent = text;
  $('signin-button').disabled = false;
}

function show(view) {
  $('signin-view').hidden = view !== 'signin';
  $('app-view').hidden = view !== 'app';
}

function escapeXml(s) {
  return s.replace(/[<>&"']/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', '"': '&quot;', "'": '&apos;' })[c]);
}

function bare(uri) {
  return String(uri).replace(/^sips?:/i, '').split(/[;>]/)[0].replace(/^</, '');
}

// ---- sign in and out ----

async function signIn(event) {
  event.preventDefault();
  $('signin-error').textContent = '';
  let address = $('address').value.trim().replace(/^sips?:/i, '');
  const password = $('password').value;
  let cfg;
  try {
    cfg = await loadConfig();
  } catch (e) {
    return signinError(`Cannot reach the server: ${e.message}`);
  }
  if (!address.includes('@')) address = `${address}@${cfg.domain}`;
  if (!/^[^@\s]+@[^@\s]+$/.test(address)) return signinError('Enter a SIP address such as alice@example.test.');
  if (!password) return signinError('Enter your password.');
  let url;
  try {
    url = webSocketUrl(cfg);
  } catch (e) {
    return signinError(e.message);
  }
  $('signin-button').disabled = true;
  setConnection(`Connecting to ${url}…`);
  Object.assign(state, { me: address, signedIn: false, connectedOnce: false, signingOut: false, etag: null, publishing: false, republish: null });
  const ua = new JsSIP.UA({
    sockets: [new JsSIP.WebSocketInterface(url)],
    uri: `sip:${address}`,
    password,
    authorization_user: address.split('@')[0],
    register: true,
    register_expires: 300,
    session_timers: false,
    user_agent: 'Parley web client',
    connection_recovery_min_interval: 2,
    connection_recovery_max_interval: 8,
  });
  state.ua = ua;
  ua.on('connected', () => {
    state.connectedOnce = true;
    setConnection(state.signedIn ? 'Reconnected, signing in again…' : 'Connected, signing in…');
  });
  ua.on('disconnected', () => {
    if (state.signingOut || state.ua !== ua) return;
    if (!state.connectedOnce && !state.signedIn) {
      ua.stop();
      state.ua = null;
      setConnection('Not connected', true);
      return signinError(`Cannot reach the server at ${url}. Check the address, or try again later.`);
    }
    setConnection('Connection lost: retrying…', true);
  });
  ua.on('registered', () => {
    const first = !state.signedIn;
    state.signedIn = true;
    setConnection(`Signed in as ${address}`);
    if (first) enterApp();
    // Subscriptions and publications went with the old connection: start them again.
    watchContacts();
    publish();
  });
  ua.on('registrationFailed', (e) => {
    if (state.ua !== ua) return;
    if (state.signedIn) {
      setConnection(`Signing in again failed (${e.cause}): retrying…`, true);
      return;
    }
    state.signingOut = true;
    ua.stop();
    state.ua = null;
    setConnection('Not signed in', true);
    if (e.cause === JsSIP.C.causes.AUTHENTICATION_ERROR || e.cause === JsSIP.C.causes.REJECTED) {
      signinError('Wrong SIP address or password.');
    } else if (e.cause === JsSIP.C.causes.CONNECTION_ERROR || e.cause === JsSIP.C.causes.REQUEST_TIMEOUT) {
      signinError(`Cannot reach the server at ${url}. Check the address, or try again later.`);
    } else {
      const code = e.response ? ` (${e.response.status_code} ${e.response.reason_phrase})` : '';
      signinError(`Sign-in failed: ${e.cause}${code}.`);
    }
  });
  ua.on('newMessage', (e) => {
    if (e.originator !== 'remote') return;
    received(e.request);
  });
  ua.start();
}

function enterApp() {
  $('me-address').textContent = state.me;
  $('signin-button').disabled = false;
  $('password').value = '';
  show('app');
  renderContacts();
  $('my-status').focus();
}

function signOut() {
  const ua = state.ua;
  state.signingOut = true;
  clearTimeout(state.publishTimer);
  if (ua) {
    try {
      if (state.subscriber) state.subscriber.terminate();
      if (state.etag) publish(0);
      ua.unregister({ all: false });
    } catch (_) {
      /* the connection may be gone already */
    }
    setTimeout(() => ua.stop(), 300);
  }
  Object.assign(state, { ua: null, signedIn: false, subscriber: null, current: null, etag: null });
  state.contacts.clear();
  state.chats.clear();
  state.unread.clear();
  $('messages').replaceChildren();
  $('compose').hidden = true;
  $('chat-heading').textContent = 'Choose a contact';
  setConnection('Signed out');
  show('signin');
  $('address').focus();
}

// ---- presence: the contact list and the user's own status ----

function watchContacts() {
  const ua = state.ua;
  if (state.subscriber) {
    try {
      state.subscriber.removeAllListeners('terminated');
      state.subscriber.terminate();
    } catch (_) {
      /* already over */
    }
  }
  const [user, domain] = state.me.split('@');
  const sub = ua.subscribe(
    `sip:${user}+contacts@${domain}`,
    'presence',
    'application/pidf+xml, application/rlmi+xml, multipart/related',
    { expires: 600, extraHeaders: ['Supported: eventlist'] },
  );
  sub.on('notify', (_final, _request, body, contentType) => onNotify(body || '', contentType || ''));
  sub.on('terminated', () => {
    if (state.subscriber === sub && !state.signingOut && state.ua === ua) {
      setTimeout(() => state.subscriber === sub && state.signedIn && watchContacts(), 3000);
    }
  });
  state.subscriber = sub;
  sub.subscribe();
}

function parsePidf(xml) {
  const doc = new DOMParser().parseFromString(xml, 'application/xml');
  const presence = doc.getElementsByTagNameNS('*', 'presence')[0];
  if (!presence) return null;
  const entity = bare(presence.getAttribute('entity') || '');
  const basics = [...doc.getElementsByTagNameNS('*', 'basic')].map((b) => b.textContent.trim().toLowerCase());
  const note = (doc.getElementsByTagNameNS('*', 'note')[0] || {}).textContent || '';
  const has = (name) => doc.getElementsByTagNameNS('*', name).length > 0;
  let status = 'offline';
  if (basics.includes('open')) {
    if (has('busy') || has('on-the-phone') || has('meeting')) status = 'busy';
    else if (has('away') || has('vacation') || has('sleeping') || has('appointment')) status = 'away';
    else status = 'available';
  }
  return { entity, status, note: note.trim() };
}

function parts(body, contentType) {
  const m = /boundary="?([^";]+)"?/i.exec(contentType);
  if (!m) return [];
  return body
    .split(`--${m[1]}`)
    .slice(1)
    .filter((p) => !p.startsWith('--'))
    .map((p) => {
      const cut = p.indexOf('\r\n\r\n');
      const head = p.slice(0, cut);
      const type = (/content-type:\s*([^;\r\n]+)/i.exec(head) || [])[1] || '';
      return { type: type.trim().toLowerCase(), body: p.slice(cut + 4).replace(/\r\n$/, '') };
    });
}

function onNotify(body, contentType) {
  const type = contentType.toLowerCase();
  if (type.startsWith('multipart/related')) {
    const all = parts(body, contentType);
    const rlmi = all.find((p) => p.type === 'application/rlmi+xml');
    if (rlmi) {
      const doc = new DOMParser().parseFromString(rlmi.body, 'application/xml');
      const list = doc.getElementsByTagNameNS('*', 'list')[0];
      const resources = [...doc.getElementsByTagNameNS('*', 'resource')].map((r) => bare(r.getAttribute('uri')));
      if (list && list.getAttribute('fullState') === 'true') {
        for (const a of [...state.contacts.keys()]) if (!resources.includes(a)) state.contacts.delete(a);
        for (const a of resources) if (!state.contacts.has(a)) state.contacts.set(a, { status: 'offline', note: '' });
      }
    }
    for (const p of all.filter((p) => p.type === 'application/pidf+xml')) {
      const pidf = parsePidf(p.body);
      if (pidf && pidf.entity) state.contacts.set(pidf.entity, { status: pidf.status, note: pidf.note });
    }
  } else if (type.startsWith('application/pidf+xml')) {
    const pidf = parsePidf(body);
    if (pidf && pidf.entity) state.contacts.set(pidf.entity, { status: pidf.status, note: pidf.note });
  }
  renderContacts();
}

function pidfDocument(status, note) {
  const basic = status === 'offline' ? 'closed' : 'open';
  const activity = status === 'away' ? '<rpid:away/>' : status === 'busy' ? '<rpid:busy/>' : '';
  const person = activity ? `<dm:person id="p1"><rpid:activities>${activity}</rpid:activities></dm:person>` : '';
  const noteXml = note ? `<note>${escapeXml(note)}</note>` : '';
  return (
    '<?xml version="1.0" encoding="UTF-8"?>\n' +
    '<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model" ' +
    `xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" entity="sip:${escapeXml(state.me)}">` +
    `<tuple id="web"><status><basic>${basic}</basic></status>${noteXml}</tuple>${person}</presence>`
  );
}

// PUBLISH (RFC 3903): a new publication, or a change or refresh of ours (SIP-If-Match).
function publish(expires = 600) {
  const ua = state.ua;
  if (!ua) return;
  clearTimeout(state.publishTimer);
  // One at a time: a change made while a PUBLISH is on its way follows with its ETag.
  if (state.publishing) {
    state.republish = expires;
    return;
  }
  state.publishing = true;
  const done = () => {
    state.publishing = false;
    const next = state.republish;
    state.republish = null;
    if (next !== null && next !== undefined) publish(next);
  };
  const headers = ['Event: presence', `Expires: ${expires}`];
  if (state.etag) headers.push(`SIP-If-Match: ${state.etag}`);
  let body;
  if (expires > 0) {
    headers.push('Content-Type: application/pidf+xml');
    body = pidfDocument($('my-status').value, $('my-note').value.trim());
  }
  const target = ua.normalizeTarget(`sip:${state.me}`);
  const request = new SIPMessage.OutgoingRequest('PUBLISH', target, ua, { to_uri: target }, headers, body);
  const retry = () => {
    state.publishing = false;
    if (state.ua === ua && state.signedIn) state.publishTimer = setTimeout(() => publish(), 5000);
  };
  new RequestSender(ua, request, {
    onRequestTimeout: retry,
    onTransportError: retry,
    onReceiveResponse: (response) => {
      const code = response.status_code;
      if (code >= 200 && code < 300) {
        state.etag = expires > 0 ? response.getHeader('SIP-ETag') : null;
        const granted = parseInt(response.getHeader('Expires') || `${expires}`, 10) || expires;
        if (expires > 0) state.publishTimer = setTimeout(() => publish(), Math.max(granted * 800, 5000));
      } else if (code === 412 && state.etag) {
        state.etag = null; // the server forgot our publication (expired or restarted): a new one
        if (state.republish === null || state.republish === undefined) state.republish = expires;
      } else if (code >= 300) {
        setConnection(`Could not set your status: ${code} ${response.reason_phrase}`, true);
      }
      if (code >= 200) done();
    },
  }).send();
}

// ---- contacts and chats ----

function statusLine(c) {
  return c.note && c.note !== STATUS_TEXT[c.status] ? `${STATUS_TEXT[c.status]}: ${c.note}` : STATUS_TEXT[c.status];
}

function renderContacts() {
  const ul = $('contacts');
  const addresses = new Set([...state.contacts.keys(), ...state.chats.keys()]);
  const items = [...addresses].sort().map((address) => {
    const c = state.contacts.get(address);
    const li = document.createElement('li');
    li.dataset.address = address;
    li.dataset.status = c ? c.status : 'unknown';
    const button = document.createElement('button');
    button.type = 'button';
    button.className = 'contact';
    if (state.current === address) button.setAttribute('aria-current', 'true');
    const dot = document.createElement('span');
    dot.className = `dot ${c ? c.status : ''}`;
    dot.setAttribute('aria-hidden', 'true');
    const who = document.createElement('span');
    who.className = 'who';
    const name = document.createElement('span');
    name.className = 'name';
    name.textContent = address;
    const line = document.createElement('span');
    line.className = 'state';
    line.textContent = c ? statusLine(c) : 'Not in your contact list';
    who.append(name, line);
    button.append(dot, who);
    const unread = state.unread.get(address) || 0;
    let label = `${address}, ${line.textContent}`;
    if (unread) {
      const badge = document.createElement('span');
      badge.className = 'unread';
      badge.textContent = String(unread);
      button.append(badge);
      label += `, ${unread} unread`;
    }
    button.setAttribute('aria-label', label);
    button.addEventListener('click', () => openChat(address));
    li.append(button);
    return li;
  });
  ul.replaceChildren(...items);
  $('contacts-empty').hidden = items.length > 0;
}

function openChat(address) {
  state.current = address;
  state.unread.delete(address);
  $('chat-heading').textContent = `Chat with ${address}`;
  $('compose').hidden = false;
  renderMessages();
  renderContacts();
  $('compose-text').focus();
}

function timeText(at) {
  return at.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

function renderMessages() {
  const list = state.chats.get(state.current) || [];
  const ol = $('messages');
  ol.replaceChildren(
    ...list.map((m) => {
      const li = document.createElement('li');
      li.className = `msg ${m.dir}${m.failed ? ' failed' : ''}`;
      const text = document.createElement('span');
      text.className = 'text';
      text.textContent = m.text;
      const meta = document.createElement('span');
      meta.className = 'meta';
      meta.textContent = `${m.dir === 'in' ? 'received' : 'sent'} ${timeText(m.at)}${m.meta ? ` · ${m.meta}` : ''}`;
      li.append(text, meta);
      return li;
    }),
  );
  ol.scrollTop = ol.scrollHeight;
}

function addMessage(address, message) {
  if (!state.chats.has(address)) state.chats.set(address, []);
  state.chats.get(address).push(message);
  if (state.current === address && !document.hidden) {
    renderMessages();
  } else if (message.dir === 'in') {
    state.unread.set(address, (state.unread.get(address) || 0) + 1);
  }
  renderContacts();
}

function messageText(request) {
  const type = (request.getHeader('Content-Type') || 'text/plain').toLowerCase();
  const body = request.body || '';
  if (type.startsWith('message/cpim')) {
    // CPIM (RFC 3862): headers, a blank line, MIME headers, a blank line, the content.
    const sections = body.split(/\r?\n\r?\n/);
    return sections.slice(2).join('\n\n');
  }
  return body;
}

function received(request) {
  const from = `${request.from.uri.user}@${request.from.uri.host}`;
  const date = request.getHeader('Date');
  const sentAt = date ? new Date(date) : null;
  // The server dates the messages it kept while this user had no device signed in (JsSIP and
  // most clients send none with a live message).
  const kept = sentAt && !Number.isNaN(sentAt.getTime());
  addMessage(from, {
    dir: 'in',
    text: messageText(request),
    at: kept ? sentAt : new Date(),
    meta: kept ? `sent ${sentAt.toLocaleString()} while you were away` : '',
  });
}

function send(event) {
  event.preventDefault();
  const input = $('compose-text');
  const text = input.value;
  const to = state.current;
  if (!text.trim() || !to || !state.ua) return;
  input.value = '';
  const message = { dir: 'out', text, at: new Date(), meta: 'sending…' };
  addMessage(to, message);
  state.ua.sendMessage(`sip:${to}`, text, {
    contentType: 'text/plain',
    eventHandlers: {
      succeeded: (e) => {
        const code = e.response ? e.response.status_code : 200;
        message.meta = code === 202 ? `kept for ${to}: delivered when they sign in` : 'delivered';
        renderMessages();
      },
      failed: (e) => {
        message.failed = true;
        const r = e.response;
        message.meta =
          r && r.status_code === 480
            ? `not delivered: ${to} is not signed in`
            : r && r.status_code === 404
              ? `not delivered: no such user ${to}`
              : `not delivered: ${r ? `${r.status_code} ${r.reason_phrase}` : e.cause}`;
        renderMessages();
      },
    },
  });
}

function newChat(event) {
  event.preventDefault();
  let address = $('new-chat-address').value.trim().replace(/^sips?:/i, '');
  if (!address) return;
  if (!address.includes('@') && state.config) address = `${address}@${state.config.domain}`;
  $('new-chat-address').value = '';
  if (!state.chats.has(address)) state.chats.set(address, []);
  openChat(address);
}

document.addEventListener('visibilitychange', () => {
  if (!document.hidden && state.current) {
    state.unread.delete(state.current);
    renderContacts();
  }
});
$('signin').addEventListener('submit', signIn);
$('signout').addEventListener('click', signOut);
$('compose').addEventListener('submit', send);
$('new-chat').addEventListener('submit', newChat);
$('my-status').addEventListener('change', () => publish());
$('my-note').addEventListener('change', () => publish());
show('signin');
setConnection('Not signed in');
loadConfig().catch(() => setConnection('Cannot reach the server', true));
