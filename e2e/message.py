#!/usr/bin/env python3
"""A page-mode MESSAGE through a Home Server, from this host: bob registers (digest) from one UDP
socket, alice sends him a MESSAGE (digest) from another, bob receives it and answers 200.

    e2e/message.py HOST PORT CONTACT_HOST

HOST:PORT is the server's SIP UDP address as seen from here (a node port); CONTACT_HOST is the
address at which the server's pod reaches this host (the node IP). Exits 0, or 1 with the step
that failed. Standard library only; the users are those of e2e/domain.yaml.
"""

import hashlib
import re
import socket
import sys
import threading
import uuid

DOMAIN = "example.test"
TIMEOUT = 10.0


def fail(msg):
    print(f"message: FAILED: {msg}", file=sys.stderr)
    sys.exit(1)


def md5(s):
    return hashlib.md5(s.encode()).hexdigest()


def header(msg, name):
    m = re.search(rf"^{name}\s*:\s*(.*?)\r?$", msg, re.M | re.I)
    return m.group(1) if m else None


def status(msg):
    m = re.match(r"SIP/2.0 (\d{3})", msg)
    return int(m.group(1)) if m else None


class Ua:
    def __init__(self, user, password, server, contact_host):
        self.user, self.password, self.server = user, password, server
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("0.0.0.0", 0))
        self.sock.settimeout(TIMEOUT)
        self.port = self.sock.getsockname()[1]
        self.contact = f"<sip:{user}@{contact_host}:{self.port}>"
        self.call_id = uuid.uuid4().hex
        self.cseq = 0
        self.tag = uuid.uuid4().hex[:8]

    def recv_from(self):
        try:
            data, addr = self.sock.recvfrom(65535)
        except socket.timeout:
            fail(f"{self.user}: nothing received within {TIMEOUT} s")
        return data.decode(errors="replace"), addr

    def recv(self):
        return self.recv_from()[0]

    def request(self, method, uri, to, extra="", body="", content_type=None):
        """Sends a request, answers one digest challenge, returns the final response."""
        auth = ""
        for _ in range(2):
            self.cseq += 1
            branch = "z9hG4bK" + uuid.uuid4().hex
            lines = [
                f"{method} {uri} SIP/2.0",
                f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch={branch};rport",
                f"From: <sip:{self.user}@{DOMAIN}>;tag={self.tag}",
                f"To: {to}",
                f"Call-ID: {self.call_id}",
                f"CSeq: {self.cseq} {method}",
                "Max-Forwards: 70",
            ]
            if extra:
                lines.append(extra)
            if auth:
                lines.append(auth)
            if content_type:
                lines.append(f"Content-Type: {content_type}")
            lines.append(f"Content-Length: {len(body.encode())}")
            self.sock.sendto(("\r\n".join(lines) + "\r\n\r\n" + body).encode(), self.server)
            while True:
                resp = self.recv()
                code = status(resp)
                if code is not None and code >= 200:
                    break
            if code not in (401, 407) or auth:
                return resp
            name = "WWW-Authenticate" if code == 401 else "Proxy-Authenticate"
            challenge = header(resp, name) or fail(f"{code} without {name}")
            params = dict(re.findall(r'(\w+)="?([^",]*)"?', challenge))
            ha1 = md5(f"{self.user}:{params['realm']}:{self.password}")
            ha2 = md5(f"{method}:{uri}")
            qop = "auth" if "auth" in params.get("qop", "").split(",") else None
            answer_name = "Authorization" if code == 401 else "Proxy-Authorization"
            cnonce, nc = uuid.uuid4().hex[:16], "00000001"
            if qop:
                response = md5(f"{ha1}:{params['nonce']}:{nc}:{cnonce}:{qop}:{ha2}")
                auth = (
                    f'{answer_name}: Digest username="{self.user}", realm="{params["realm"]}", '
                    f'nonce="{params["nonce"]}", uri="{uri}", response="{response}", algorithm=MD5, '
                    f'qop={qop}, nc={nc}, cnonce="{cnonce}"'
                )
            else:
                response = md5(f"{ha1}:{params['nonce']}:{ha2}")
                auth = (
                    f'{answer_name}: Digest username="{self.user}", realm="{params["realm"]}", '
                    f'nonce="{params["nonce"]}", uri="{uri}", response="{response}", algorithm=MD5'
                )
            if "opaque" in params:
                auth += f', opaque="{params["opaque"]}"'
        return resp


def main():
    if len(sys.argv) != 4:
        fail("usage: message.py HOST PORT CONTACT_HOST")
    server = (sys.argv[1], int(sys.argv[2]))
    contact_host = sys.argv[3]

    bob = Ua("bob", "bob-password", server, contact_host)
    resp = bob.request(
        "REGISTER", f"sip:{DOMAIN}", f"<sip:bob@{DOMAIN}>", extra=f"Contact: {bob.contact}\r\nExpires: 120"
    )
    if status(resp) != 200:
        fail(f"bob's REGISTER: {resp.splitlines()[0]}")
    print(f"ok: bob registered (contact {bob.contact})")

    alice = Ua("alice", "alice-password", server, contact_host)
    text = f"hello bob from the e2e suite {uuid.uuid4().hex[:8]}"
    # Alice sends (in a thread, answering the challenge); bob receives and answers; then alice's
    # final response arrives.
    result = {}
    t = threading.Thread(
        target=lambda: result.setdefault(
            "resp",
            alice.request(
                "MESSAGE", f"sip:bob@{DOMAIN}", f"<sip:bob@{DOMAIN}>", body=text, content_type="text/plain"
            ),
        )
    )
    t.start()
    got, source = bob.recv_from()
    while not got.startswith("MESSAGE "):
        got, source = bob.recv_from()
    if not got.rstrip("\r\n").endswith(text):
        fail(f"bob got a MESSAGE without alice's text: {got!r}")
    # 200 OK back along the request's Via.
    vias = [line for line in got.split("\r\n") if line.lower().startswith(("via:", "v:"))]
    answer = ["SIP/2.0 200 OK", *vias]
    for name in ("From", "To", "Call-ID", "CSeq"):
        value = header(got, name)
        if name == "To" and value and ";tag=" not in value:
            value += ";tag=bob" + uuid.uuid4().hex[:6]
        answer.append(f"{name}: {value}")
    answer.append("Content-Length: 0")
    # Back to where the request came from (the server, as its top Via says).
    bob.sock.sendto(("\r\n".join(answer) + "\r\n\r\n").encode(), source)
    t.join(TIMEOUT + 5)
    resp = result.get("resp") or fail("alice got no final response to her MESSAGE")
    if status(resp) != 200:
        fail(f"alice's MESSAGE: {resp.splitlines()[0]}")
    print("ok: alice's MESSAGE reached bob, and bob's 200 OK reached alice")


if __name__ == "__main__":
    main()
