// Drives the web client in Debian's headless Chromium (puppeteer-core), for server/tests/web.rs,
// which starts the servers (and baresip) and runs this with a scenario name:
//
//   node web/test/browser.mjs SCENARIO
//
// Environment: PARLEY_WEB (the page's URL), PARLEY_SHOTS (directory for screenshots), CHROMIUM
// (default /usr/bin/chromium), and per scenario PARLEY_USER, PARLEY_PEER, PARLEY_TEXT,
// PARLEY_EXPECT. Every wait has a deadline; a failure exits 1 with what was on the page.
// Progress lines on stdout start with "step:" so the Rust side can follow.

import puppeteer from 'puppeteer-core';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

const WEB = process.env.PARLEY_WEB;
const SHOTS = process.env.PARLEY_SHOTS || '.';
const WAIT = Number(process.env.PARLEY_WAIT_MS || 30000);
const scenario = process.argv[2];

function step(what) {
  console.log(`step: ${what}`);
}

async function launch() {
  return puppeteer.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    // The servers' certificates are self-signed (wss); as root Chromium needs --no-sandbox.
    args: ['--no-sandbox', '--ignore-certificate-errors', '--disable-gpu', '--disable-dev-shm-usage'],
    protocolTimeout: 90000,
    timeout: 90000,
  });
}

async function openPage(browser, name, viewport = { width: 1000, height: 720 }) {
  const context = await browser.createBrowserContext();
  const page = await context.newPage();
  await page.setViewport(viewport);
  // JsSIP's debug log, kept to show when a wait fails.
  page.parleyLog = [];
  await page.evaluateOnNewDocument(() => localStorage.setItem('debug', 'JsSIP:Transport JsSIP:Subscriber JsSIP:UA'));
  page.on('console', (m) => {
    page.parleyLog.push(m.text().replace(/%c/g, '').slice(0, 1500));
    if (page.parleyLog.length > 200) page.parleyLog.shift();
    if (m.type() === 'error') console.log(`[${name} console] ${m.text()}`);
  });
  page.on('pageerror', (e) => console.log(`[${name} page error] ${e.message}`));
  await page.goto(WEB, { waitUntil: 'load' });
  page.parleyName = name;
  return page;
}

async function waitFor(page, what, fn, ...args) {
  try {
    await page.waitForFunction(fn, { timeout: WAIT, polling: 100 }, ...args);
  } catch (e) {
    const text = await page.evaluate(() => document.body.innerText).catch(() => '(page gone)');
    const log = (page.parleyLog || []).filter((l) => !/^JsSIP:\w+ \w+\(\)/.test(l)).slice(-25).join('\n');
    throw new Error(`${page.parleyName}: no ${what} within ${WAIT} ms (${e.message}); page:\n${text}\nJsSIP log (last lines):\n${log}`);
  }
}

async function signIn(page, address, password) {
  await page.click('#address', { clickCount: 3 });
  await page.type('#address', address);
  await page.type('#password', password);
  // The keyboard: Enter in the password field submits the form.
  await page.keyboard.press('Enter');
}

async function signedIn(page, address) {
  await signIn(page, address, `${address.split('@')[0]}-password`);
  await waitFor(page, 'signed-in view', () => !document.getElementById('app-view').hidden);
  step(`${address} signed in`);
}

function contactState(page, address, status, noteText) {
  return waitFor(
    page,
    `${address} shown ${status}${noteText ? ` with "${noteText}"` : ''}`,
    (a, s, n) => {
      const li = document.querySelector(`#contacts li[data-address="${a}"]`);
      return li && li.dataset.status === s && (!n || li.textContent.includes(n));
    },
    address,
    status,
    noteText || '',
  );
}

async function setStatus(page, status, note) {
  if (note !== undefined) {
    await page.click('#my-note', { clickCount: 3 });
    await page.type('#my-note', note);
  }
  await page.select('#my-status', status);
}

async function openChat(page, address) {
  // Clicked in the page: the list is redrawn as presence changes, so a handle taken from outside
  // may be gone by the time it is clicked.
  await waitFor(page, `${address} in the list`, (a) => {
    const b = document.querySelector(`#contacts li[data-address="${a}"] button`);
    if (b) b.click();
    return Boolean(b);
  }, address);
  await waitFor(page, `chat with ${address}`, (a) => document.getElementById('chat-heading').textContent.includes(a), address);
}

async function sendText(page, text) {
  await page.type('#compose-text', text);
  await page.keyboard.press('Enter');
}

function messageShown(page, text, dir) {
  return waitFor(
    page,
    `${dir === 'in' ? 'received' : 'sent'} message "${text}"`,
    (t, d) => [...document.querySelectorAll(`#messages li.msg.${d}`)].some((li) => li.querySelector('.text').textContent === t),
    text,
    dir,
  );
}

async function shot(page, name) {
  mkdirSync(SHOTS, { recursive: true });
  const path = join(SHOTS, `${process.env.PARLEY_SHOT_PREFIX || ''}${name}.png`);
  await page.screenshot({ path });
  step(`screenshot ${path}`);
}

const scenarios = {
  // alice and bob in two pages: presence both ways, a status change with a note, messages both
  // ways with an unread marker, and "appear offline".
  async chat(browser) {
    const alice = await openPage(browser, 'alice');
    const bob = await openPage(browser, 'bob');
    await signedIn(alice, 'alice@example.test');
    await signedIn(bob, 'bob@example.test');
    await contactState(alice, 'bob@example.test', 'available');
    await contactState(bob, 'alice@example.test', 'available');
    step('each sees the other available');
    await setStatus(bob, 'away', 'back at three');
    await contactState(alice, 'bob@example.test', 'away', 'back at three');
    step('alice sees bob away with his note');
    await setStatus(alice, 'busy', 'writing');
    await contactState(bob, 'alice@example.test', 'busy', 'writing');
    step('bob sees alice busy');
    await openChat(alice, 'bob@example.test');
    await sendText(alice, 'hello bob, from the browser');
    await messageShown(alice, 'hello bob, from the browser', 'out');
    await waitFor(alice, 'delivered mark', () => [...document.querySelectorAll('#messages .meta')].some((m) => m.textContent.includes('delivered')));
    await waitFor(bob, 'unread marker for alice', () => {
      const b = document.querySelector('#contacts li[data-address="alice@example.test"] .unread');
      return b && b.textContent === '1';
    });
    step('bob sees one unread from alice');
    await openChat(bob, 'alice@example.test');
    await messageShown(bob, 'hello bob, from the browser', 'in');
    await waitFor(bob, 'unread marker gone', () => !document.querySelector('#contacts li[data-address="alice@example.test"] .unread'));
    await sendText(bob, 'hi alice, got it');
    await messageShown(alice, 'hi alice, got it', 'in');
    step('messages both ways');
    await shot(alice, 'web-alice');
    await shot(bob, 'web-bob');
    // A phone's width (isMobile would reload the page, and sign bob out).
    await bob.setViewport({ width: 390, height: 844 });
    await shot(bob, 'web-bob-phone');
    await setStatus(bob, 'offline');
    await contactState(alice, 'bob@example.test', 'offline');
    step('alice sees bob offline');
  },

  // A wrong password says so; a server that cannot be reached says so.
  async errors(browser) {
    const page = await openPage(browser, 'wrong-password');
    await signIn(page, 'alice@example.test', 'not-her-password');
    await waitFor(page, 'wrong-password error', () => document.getElementById('signin-error').textContent.includes('Wrong SIP address or password'));
    step('wrong password shown');
    await shot(page, 'web-wrong-password');
    // The page is told of a WebSocket port where nothing listens.
    const dead = await openPage(browser, 'unreachable');
    await dead.setRequestInterception(true);
    dead.on('request', (r) => {
      if (r.url().endsWith('/config.json')) {
        r.respond({ status: 200, contentType: 'application/json', body: JSON.stringify({ domain: 'example.test', ws: null, wss: Number(process.env.PARLEY_DEAD_PORT) }) });
      } else {
        r.continue();
      }
    });
    await dead.reload({ waitUntil: 'load' });
    await signIn(dead, 'alice@example.test', 'alice-password');
    await waitFor(dead, 'unreachable error', () => document.getElementById('signin-error').textContent.includes('Cannot reach the server'));
    step('unreachable server shown');
  },

  // Signs in as PARLEY_USER, sends PARLEY_TEXT to PARLEY_PEER (when set), then waits for a
  // message from the peer containing PARLEY_EXPECT.
  async converse(browser) {
    const user = process.env.PARLEY_USER;
    const peer = process.env.PARLEY_PEER;
    const page = await openPage(browser, user);
    await signedIn(page, user);
    if (process.env.PARLEY_TEXT) {
      await page.type('#new-chat-address', peer);
      await page.keyboard.press('Enter');
      await sendText(page, process.env.PARLEY_TEXT);
      await waitFor(page, 'delivered mark', () => [...document.querySelectorAll('#messages .meta')].some((m) => m.textContent.includes('delivered')));
      step('sent');
    }
    const expect = process.env.PARLEY_EXPECT;
    await waitFor(
      page,
      `a message from ${peer} with "${expect}"`,
      (p, e) => {
        const li = document.querySelector(`#contacts li[data-address="${p}"] button`);
        if (li && !document.getElementById('chat-heading').textContent.includes(p)) li.click();
        return [...document.querySelectorAll('#messages li.msg.in .text')].some((t) => t.textContent.includes(e));
      },
      peer,
      expect,
    );
    step('received');
  },

  // Signs in as PARLEY_USER; the test kills the server (kill -9) and starts it again: the page
  // says the connection is lost and it retries, then signs in again by itself and gets a message
  // from PARLEY_PEER containing PARLEY_EXPECT over the new connection.
  async reconnect(browser) {
    const user = process.env.PARLEY_USER;
    const page = await openPage(browser, user);
    await signedIn(page, user);
    await waitFor(page, 'connection-lost notice', () => document.getElementById('connection').textContent.includes('Connection lost: retrying'));
    step('connection lost shown');
    await waitFor(page, 'signed in again', () => document.getElementById('connection').textContent.startsWith('Signed in as'));
    step('signed in again');
    const peer = process.env.PARLEY_PEER;
    const expect = process.env.PARLEY_EXPECT;
    await waitFor(page, `a message from ${peer}`, (p) => document.querySelector(`#contacts li[data-address="${p}"] .unread`), peer);
    await openChat(page, peer);
    await waitFor(page, `"${expect}"`, (e) => [...document.querySelectorAll('#messages li.msg.in .text')].some((t) => t.textContent.includes(e)), expect);
    step('received');
  },

  // alice, in the browser, writes to bob while he is signed out: the page says the message is
  // kept for him; bob then signs in in another page and finds it, marked as sent while away.
  async 'kept-from-browser'(browser) {
    const alice = await openPage(browser, 'alice');
    await signedIn(alice, 'alice@example.test');
    await alice.type('#new-chat-address', 'bob@example.test');
    await alice.keyboard.press('Enter');
    await sendText(alice, 'for when you are back');
    await waitFor(alice, 'kept notice', () => [...document.querySelectorAll('#messages .meta')].some((m) => m.textContent.includes('kept for bob@example.test')));
    step('alice sees it kept');
    const bob = await openPage(browser, 'bob');
    await signedIn(bob, 'bob@example.test');
    await openChat(bob, 'alice@example.test');
    await waitFor(bob, 'the kept message', () => [...document.querySelectorAll('#messages li.msg.in')].some((li) => li.textContent.includes('for when you are back') && li.textContent.includes('while you were away')));
    step('bob got it');
  },

  // Signs in as PARLEY_USER and expects the messages PARLEY_EXPECT (separated by "|") from
  // PARLEY_PEER, kept while offline: in order, each once, marked with when they were sent.
  async offline(browser) {
    const user = process.env.PARLEY_USER;
    const peer = process.env.PARLEY_PEER;
    const expected = process.env.PARLEY_EXPECT.split('|');
    const page = await openPage(browser, user);
    await signedIn(page, user);
    await waitFor(page, `unread marker for ${peer}`, (p, n) => {
      const b = document.querySelector(`#contacts li[data-address="${p}"] .unread`);
      return b && Number(b.textContent) >= n;
    }, peer, expected.length);
    await openChat(page, peer);
    await waitFor(page, `${expected.length} kept messages`, (n) => document.querySelectorAll('#messages li.msg.in').length >= n, expected.length);
    const shown = await page.$$eval('#messages li.msg.in', (lis) => lis.map((li) => ({ text: li.querySelector('.text').textContent, meta: li.querySelector('.meta').textContent })));
    const texts = shown.map((m) => m.text);
    if (JSON.stringify(texts) !== JSON.stringify(expected)) throw new Error(`kept messages shown ${JSON.stringify(texts)}, expected ${JSON.stringify(expected)}`);
    for (const m of shown) if (!m.meta.includes('while you were away')) throw new Error(`no "sent ... while you were away" on ${JSON.stringify(m)}`);
    step(`kept messages shown in order: ${JSON.stringify(shown)}`);
    await shot(page, 'web-offline-delivered');
    // Print the count once the Rust side has confirmed the server holds nothing more.
    console.log(`count: ${texts.length}`);
  },
};

const run = scenarios[scenario];
if (!run || !WEB) {
  console.error(`usage: PARLEY_WEB=http://host:port/ node browser.mjs ${Object.keys(scenarios).join('|')}`);
  process.exit(2);
}
const browser = await launch();
let failed = false;
try {
  await run(browser);
  step('done');
} catch (e) {
  failed = true;
  console.error(`FAILED: ${e.stack || e}`);
} finally {
  await browser.close().catch(() => {});
}
process.exit(failed ? 1 : 0);
