// Browser test of bootplane's web UI: Debian's chromium driven by playwright-core against a
// REAL running appliance. Started by tests/browser.rs (which runs `bootplane serve` on free
// ports); it can also be run by hand against any appliance:
//
//   BOOTPLANE_URL=http://127.0.0.1:8080 BOOTPLANE_DHCP=127.0.0.1:67 \
//   BOOTPLANE_ADMIN_PASSWORD=... BOOTPLANE_LAN=10.77.0.0/24 node tests/browser/ui.spec.mjs
//
// Environment:
//   BOOTPLANE_URL             base URL of the appliance's HTTP port (required)
//   BOOTPLANE_DHCP            host:port of its DHCP server, which gets a real DHCPDISCOVER (required)
//   BOOTPLANE_ADMIN_PASSWORD  the admin account's password (required)
//   BOOTPLANE_LAN             the LAN subnet bootplane serves or sits on, ADDR/PREFIX (required)
//   BOOTPLANE_ENDPOINT        the cluster's Kubernetes endpoint, expected in the kubeconfig
//   BOOTPLANE_SCREENSHOTS     where screenshots go [default: tests/artifacts/screenshots]
//   BOOTPLANE_CLUSTER_PAGE    "required" (default) or "optional": whether a missing cluster page
//                             fails the run or only skips the kubeconfig download
//   BOOTPLANE_TALOS_VERSION   the Talos version whose boot assets are in place [default: v1.13.9]
//   BOOTPLANE_INITRAMFS_BYTES the size of that initramfs (checked byte for byte) [default: not checked]
//   CHROMIUM                  the browser [default: /usr/bin/chromium]
//
// The steps run in order, in one browser session; each depends on the ones before, so the first
// failure stops the run (with a screenshot of the page as it was) and the process exits 1.

import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import dgram from 'node:dgram';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));

function need(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`${name} is not set (see the top of ${path.basename(fileURLToPath(import.meta.url))})`);
    process.exit(2);
  }
  return value;
}

const BASE = need('BOOTPLANE_URL').replace(/\/$/, '');
const [DHCP_HOST, DHCP_PORT] = need('BOOTPLANE_DHCP').split(':');
const PASSWORD = need('BOOTPLANE_ADMIN_PASSWORD');
const LAN = parseCidr(need('BOOTPLANE_LAN'));
const ENDPOINT = process.env.BOOTPLANE_ENDPOINT || '';
const SHOTS = path.resolve(process.env.BOOTPLANE_SCREENSHOTS || path.join(here, '..', 'artifacts', 'screenshots'));
const CLUSTER_PAGE_REQUIRED = (process.env.BOOTPLANE_CLUSTER_PAGE || 'required') !== 'optional';
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const TALOS_VERSION = process.env.BOOTPLANE_TALOS_VERSION || 'v1.13.9';
const INITRAMFS_BYTES = Number(process.env.BOOTPLANE_INITRAMFS_BYTES || 0);

// ---------------------------------------------------------------------------------------------
// Addresses and MACs

function parseCidr(text) {
  const m = /^(\d+)\.(\d+)\.(\d+)\.(\d+)\/(\d+)$/.exec(text.trim());
  assert.ok(m, `BOOTPLANE_LAN must be ADDR/PREFIX, got ${text}`);
  const prefix = Number(m[5]);
  const addr = m.slice(1, 5).reduce((a, o) => a * 256 + Number(o), 0);
  const mask = prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
  return { network: (addr & mask) >>> 0, prefix, mask };
}

function ipText(n) {
  return [24, 16, 8, 0].map((s) => (n >>> s) & 255).join('.');
}

/** The `n`th host address of the LAN, with its prefix, as the assignment form takes it. */
function lanHost(n) {
  return `${ipText(LAN.network + n)}/${LAN.prefix}`;
}

/** A documentation address that is not inside the LAN. */
function outsideHost() {
  for (const candidate of ['198.51.100.10', '203.0.113.10', '192.0.2.10']) {
    const n = candidate.split('.').reduce((a, o) => a * 256 + Number(o), 0);
    if (((n & LAN.mask) >>> 0) !== LAN.network) { return `${candidate}/24`; }
  }
  throw new Error('every documentation range is inside the LAN');
}

/** A fresh QEMU-style MAC (52:54:00 is a locally administered prefix QEMU uses). */
function freshMac() {
  const tail = [...crypto.randomBytes(3)].map((b) => b.toString(16).padStart(2, '0'));
  return ['52', '54', '00', ...tail].join(':');
}

// ---------------------------------------------------------------------------------------------
// A real PXE DHCPDISCOVER over UDP

const OPT = { msgType: 53, vendorClass: 60, userClass: 77, clientArch: 93, nicVersion: 94, guid: 97, end: 255 };

/** A DHCPDISCOVER as BIOS PXE firmware sends it (RFC 2131 header, RFC 4578 options); with
 * `ipxe`, as the iPXE it loaded sends its own (user class "iPXE", option 77). */
function pxeDiscover(mac, xid, guid, ipxe = false) {
  const header = Buffer.alloc(240);
  header[0] = 1; // BOOTREQUEST
  header[1] = 1; // Ethernet
  header[2] = 6; // hardware address length
  header.writeUInt32BE(xid, 4);
  header.writeUInt16BE(0x8000, 10); // broadcast flag, as firmware without an address sets it
  Buffer.from(mac.split(':').map((h) => parseInt(h, 16))).copy(header, 28);
  Buffer.from([99, 130, 83, 99]).copy(header, 236); // magic cookie
  const vendorClass = Buffer.from('PXEClient:Arch:00000:UNDI:002001');
  const option = (code, bytes) => Buffer.concat([Buffer.from([code, bytes.length]), Buffer.from(bytes)]);
  return Buffer.concat([
    header,
    option(OPT.msgType, [1]), // DHCPDISCOVER
    option(OPT.vendorClass, vendorClass),
    option(OPT.clientArch, [0, 0]), // x86 BIOS
    option(OPT.nicVersion, [1, 2, 1]), // UNDI 2.1
    option(OPT.guid, Buffer.concat([Buffer.from([0]), guid])), // type 0 + 16-byte UUID
    ...(ipxe ? [option(OPT.userClass, Buffer.from('iPXE'))] : []),
    Buffer.from([OPT.end]),
  ]);
}

/** Options of a DHCP message, by code (first occurrence). */
function options(packet) {
  const found = new Map();
  let i = 240;
  while (i < packet.length) {
    const code = packet[i];
    if (code === 255) { break; }
    if (code === 0) { i += 1; continue; }
    const len = packet[i + 1];
    if (!found.has(code)) { found.set(code, packet.subarray(i + 2, i + 2 + len)); }
    i += 2 + len;
  }
  return found;
}

/** Sends the DISCOVER from an ephemeral port and returns bootplane's reply (proxy offer). */
async function sendDiscover(mac, ipxe = false) {
  const xid = crypto.randomBytes(4).readUInt32BE(0);
  const guid = crypto.randomBytes(16);
  const socket = dgram.createSocket('udp4');
  try {
    await new Promise((resolve, reject) => {
      socket.once('error', reject);
      socket.bind(0, DHCP_HOST, resolve);
    });
    const reply = new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no DHCP reply from ${DHCP_HOST}:${DHCP_PORT} within 5 s`)), 5000);
      socket.on('message', (msg) => {
        if (msg.length >= 240 && msg.readUInt32BE(4) === xid) { clearTimeout(timer); resolve(msg); }
      });
    });
    socket.send(pxeDiscover(mac, xid, guid, ipxe), Number(DHCP_PORT), DHCP_HOST);
    const msg = await reply;
    return { msg, xid };
  } finally {
    socket.close();
  }
}

// ---------------------------------------------------------------------------------------------
// A tiny sequential runner

const steps = [];
function step(name, fn) { steps.push({ name, fn }); }

let page;
let context;
const shots = [];

async function shot(name) {
  const file = path.join(SHOTS, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  shots.push(file);
}

/** The `.field-error` beside the field named `name` (inside its label), in the form `form`. */
function fieldError(form, name) {
  return form.locator('label', { has: page.locator(`[name="${name}"]`) }).locator('.field-error');
}

async function mainNavigations(fn) {
  let count = 0;
  const onNav = (frame) => { if (frame === page.mainFrame()) { count += 1; } };
  page.on('framenavigated', onNav);
  try { await fn(); } finally { page.off('framenavigated', onNav); }
  return count;
}

async function sessionCookie() {
  return (await context.cookies(BASE)).find((c) => c.name === 'bootplane_session');
}

/** The page's layout at a phone's and a desktop's width: nothing wider than the window (tables
 * scroll inside their box), checkboxes at their natural square size, every nav link on screen. */
async function checkLayout(label) {
  for (const width of [1440, 390]) {
    await page.setViewportSize({ width, height: 900 });
    const m = await page.evaluate(() => ({
      scroll: document.documentElement.scrollWidth,
      inner: window.innerWidth,
      boxes: [...document.querySelectorAll('input[type="checkbox"]')].filter((e) => e.offsetParent)
        .map((e) => { const r = e.getBoundingClientRect(); return [e.name, r.width, r.height]; }),
      nav: [...document.querySelectorAll('header nav a')]
        .map((a) => { const r = a.getBoundingClientRect(); return [a.textContent, r.left, r.right, r.width]; }),
      // What sticks out, innermost first, to say why when the page is too wide.
      wide: [...document.querySelectorAll('body *')]
        .filter((e) => e.getBoundingClientRect().right > window.innerWidth + 0.5 && !e.closest('.scroll'))
        .filter((e) => ![...e.children].some((c) => c.getBoundingClientRect().right > window.innerWidth + 0.5))
        .slice(0, 3)
        .map((e) => `${e.tagName.toLowerCase()}${e.id ? '#' + e.id : ''}.${[...e.classList].join('.')} (${Math.round(e.getBoundingClientRect().right)} px)`),
    }));
    assert.ok(m.scroll <= m.inner, `${label} at ${width} px: the page is ${m.scroll} px wide: ${m.wide.join(', ')}`);
    for (const [name, w, h] of m.boxes) {
      assert.ok(w >= 13 && h >= 13 && Math.abs(w - h) < 1, `${label} at ${width} px: checkbox ${name} is ${w}×${h} px`);
    }
    for (const [text, left, right, w] of m.nav) {
      assert.ok(w > 0 && left >= 0 && right <= m.inner, `${label} at ${width} px: nav link ${text} at ${left}–${right} px`);
    }
    if (width === 390) { await shot(`${label}-390px`); }
  }
  await page.setViewportSize({ width: 1280, height: 800 });
}

/** Whether the element is wholly inside the window as it is scrolled now. */
async function inViewport(locator) {
  const box = await locator.boundingBox();
  const height = await page.evaluate(() => window.innerHeight);
  return box !== null && box.y >= 0 && box.y + box.height <= height;
}

/** A GET over HTTP that reads `pauseAfter` bytes, then calls `whilePaused` with the bytes read
 * so far before it reads the rest; returns the whole body's length. */
function slowGet(url, pauseAfter, whilePaused) {
  return new Promise((resolve, reject) => {
    http.get(url, (res) => {
      if (res.statusCode !== 200) { reject(new Error(`GET ${url} answered ${res.statusCode}`)); res.resume(); return; }
      let got = 0;
      let paused = false;
      res.on('data', (chunk) => {
        got += chunk.length;
        if (!paused && got >= pauseAfter) {
          paused = true;
          res.pause();
          Promise.resolve(whilePaused(got)).then(() => res.resume(), (e) => { res.destroy(); reject(e); });
        }
      });
      res.on('end', () => resolve(got));
      res.on('error', reject);
    }).on('error', reject);
  });
}

/** The timeline row of `mac` on the open cluster page. */
function timelineRow(mac) {
  return page.locator(`#timeline tr[data-mac="${mac}"]`);
}

// ---------------------------------------------------------------------------------------------
// The steps

const booted = freshMac();
let added = freshMac();
while (added === booted) { added = freshMac(); }
const cpName = `cp-e2e-${booted.slice(-2)}`;
const workerName = `wk-e2e-${added.slice(-2)}`;
// Host numbers inside the LAN, random so that the script can run again against the same appliance.
const cpHost = 16 + crypto.randomInt(200);
const workerHost = cpHost + 1;
let tokenText = '';
let configToken = '';

step('a wrong password shows an error and starts no session', async () => {
  await page.goto(`${BASE}/login`);
  await shot('login');
  await page.fill('input[name="username"]', 'admin');
  await page.fill('input[name="password"]', `${PASSWORD}-wrong`);
  const [response] = await Promise.all([
    page.waitForResponse((r) => r.url() === `${BASE}/login` && r.request().method() === 'POST'),
    page.click('button[type="submit"]'),
  ]);
  assert.equal(response.status(), 401);
  const error = page.locator('.error[role="alert"]');
  await error.waitFor();
  assert.match(await error.innerText(), /wrong username or password/i);
  await shot('login-wrong-password');
  assert.equal(await sessionCookie(), undefined, 'a failed login set a session cookie');
  await page.goto(`${BASE}/ui`);
  assert.equal(new URL(page.url()).pathname, '/login', 'the machines page opened without a session');
});

step('the right password logs in with an HttpOnly SameSite session cookie', async () => {
  await page.fill('input[name="username"]', 'admin');
  await page.fill('input[name="password"]', PASSWORD);
  await Promise.all([page.waitForURL(`${BASE}/ui`), page.click('button[type="submit"]')]);
  assert.equal(await page.locator('main h1').innerText(), 'Machines');
  assert.match(await page.locator('header .who').innerText(), /admin/);
  const cookie = await sessionCookie();
  assert.ok(cookie, 'no session cookie after logging in');
  assert.equal(cookie.httpOnly, true);
  assert.equal(cookie.sameSite, 'Strict');
});

step('a machine that network-boots appears in the open list without a reload', async () => {
  const marker = crypto.randomUUID();
  await page.evaluate((m) => { window.__bootplaneMarker = m; }, marker);
  const row = page.locator(`tr[data-mac="${booted}"]`);
  assert.equal(await row.count(), 0, `${booted} is listed before it booted`);
  const navigations = await mainNavigations(async () => {
    const { msg, xid } = await sendDiscover(booted);
    // bootplane answered as a proxyDHCP server: a BOOTREPLY OFFER to this MAC, saying PXEClient.
    assert.equal(msg[0], 2, 'the reply is not a BOOTREPLY');
    assert.equal(msg.readUInt32BE(4), xid);
    const chaddr = [...msg.subarray(28, 34)].map((b) => b.toString(16).padStart(2, '0')).join(':');
    assert.equal(chaddr, booted);
    const opts = options(msg);
    assert.deepEqual([...(opts.get(OPT.msgType) || [])], [2], 'the reply is not a DHCPOFFER');
    assert.equal(String(opts.get(OPT.vendorClass) || ''), 'PXEClient');
    await row.waitFor({ timeout: 15000 });
  });
  assert.equal(navigations, 0, 'the page navigated while waiting for the new machine');
  assert.equal(await page.evaluate(() => window.__bootplaneMarker), marker, 'the page was reloaded');
  const text = await row.innerText();
  assert.match(text, new RegExp(booted));
  assert.match(text, /QEMU/, 'vendor from the OUI');
  assert.match(text, /BIOS/i, 'firmware from option 93');
  assert.match(await row.locator('.state').innerText(), /^discovered/);
  assert.match(await row.locator('.role').innerText(), /unassigned/);
  assert.ok(await row.evaluate((tr) => tr.classList.contains('fresh')), 'the new row is not highlighted');
  await shot('machines-live');
});

step('assigning the machine changes its state on the detail page and in the list', async () => {
  await Promise.all([page.waitForURL(`${BASE}/ui/machines/${booted}`), page.click(`tr[data-mac="${booted}"] a`)]);
  assert.match(await page.locator('main h1 .state').innerText(), /^discovered/);
  assert.doesNotMatch(await page.locator('main').innerText(), /since never/, 'a discovered machine waits "since never"');
  assert.match(await page.locator('.timeline').innerText(), /proxy-offer|discovered/i, 'the DHCP exchange is in the timeline');
  const form = page.locator(`form[action="/ui/machines/${booted}"]`);
  await form.locator('select[name="role"]').selectOption('controlplane');
  await form.locator('input[name="hostname"]').fill(cpName);
  await form.locator('input[name="ip"]').fill(lanHost(cpHost));
  await Promise.all([page.waitForURL(/flash=saved/), form.locator('button[type="submit"]').click()]);
  assert.equal(await page.locator('main h1').evaluate((h) => h.firstChild.textContent.trim()), cpName);
  assert.match(await page.locator('main h1 .state').innerText(), /^assigned/);
  assert.equal(await page.locator('.flash').count(), 1, 'no confirmation after saving');
  assert.equal(await form.locator('input[name="ip"]').inputValue(), lanHost(cpHost));
  await shot('machine-detail');

  await page.goto(`${BASE}/ui`);
  const row = page.locator(`tr[data-mac="${booted}"]`);
  assert.match(await row.locator('.state').innerText(), /^assigned/);
  assert.equal(await row.locator('.role').innerText(), 'controlplane');
  assert.match(await row.innerText(), new RegExp(`${cpName}[\\s\\S]*${lanHost(cpHost).split("/")[0].replaceAll(".", "\\.")}`));
});

step('bad values are refused with errors beside their fields', async () => {
  // On the machine's own form: an address that is no address, then one outside the LAN.
  await page.goto(`${BASE}/ui/machines/${booted}`);
  let form = page.locator(`form[action="/ui/machines/${booted}"]`);
  await form.locator('input[name="ip"]').fill('10.0.0.300/24');
  let [response] = await Promise.all([
    page.waitForResponse((r) => r.request().method() === 'POST'),
    form.locator('button[type="submit"]').click(),
  ]);
  assert.equal(response.status(), 422);
  form = page.locator(`form[action="/ui/machines/${booted}"]`);
  const badIp = await fieldError(form, 'ip').innerText();
  assert.ok(badIp.includes('10.0.0.300'), badIp);
  assert.match(badIp, /not an IPv4 address/i);
  assert.equal(await fieldError(form, 'hostname').count(), 0, 'an error beside a good field');

  const outside = outsideHost();
  await form.locator('input[name="ip"]').fill(outside);
  [response] = await Promise.all([
    page.waitForResponse((r) => r.request().method() === 'POST'),
    form.locator('button[type="submit"]').click(),
  ]);
  assert.equal(response.status(), 422);
  form = page.locator(`form[action="/ui/machines/${booted}"]`);
  const outsideError = await fieldError(form, 'ip').innerText();
  assert.match(outsideError, /outside/i);
  assert.ok(outsideError.includes(outside.split('/')[0]), outsideError);
  await shot('machine-field-errors');

  // Nothing was stored: the machine keeps its address.
  await page.goto(`${BASE}/ui/machines/${booted}`);
  assert.equal(await page.locator('input[name="ip"]').inputValue(), lanHost(cpHost));

  // "Add a machine": a bad MAC, then a hostname already in use.
  await page.goto(`${BASE}/ui`);
  form = page.locator('#add form');
  await form.locator('input[name="mac"]').fill('52:54:00:zz:00:01');
  await form.locator('select[name="role"]').selectOption('worker');
  await form.locator('input[name="hostname"]').fill(workerName);
  await form.locator('input[name="ip"]').fill('10.0.0.300/24');
  await Promise.all([page.waitForResponse((r) => r.request().method() === 'POST'), form.locator('button[type="submit"]').click()]);
  form = page.locator('#add form');
  const badMac = await fieldError(form, 'mac').innerText();
  assert.ok(badMac.includes('52:54:00:zz:00:01'), badMac);
  assert.match(badMac, /not a MAC address/i);
  // Every field's error at once, not only the first.
  assert.match(await fieldError(form, 'ip').innerText(), /not an IPv4 address/i, 'the bad address is not reported beside the bad MAC');
  // The page opens at its top after the refused save: the banner saying so is in view.
  assert.ok(await inViewport(page.locator('#refused')), 'the refusal banner is not in the viewport');
  await form.locator('input[name="ip"]').fill('');
  await form.locator('select[name="role"]').selectOption('unassigned');
  assert.equal(await form.locator('input[name="mac"]').inputValue(), '52:54:00:zz:00:01', 'the form forgot what was typed');

  await form.locator('input[name="mac"]').fill(added);
  await form.locator('select[name="role"]').selectOption('worker');
  await form.locator('input[name="hostname"]').fill(cpName);
  await form.locator('input[name="ip"]').fill(lanHost(workerHost));
  await Promise.all([page.waitForResponse((r) => r.request().method() === 'POST'), form.locator('button[type="submit"]').click()]);
  form = page.locator('#add form');
  const duplicate = await fieldError(form, 'hostname').innerText();
  assert.ok(duplicate.includes(cpName), duplicate);
  assert.match(duplicate, /already used/i);
  assert.ok(duplicate.includes(booted), `the error does not name the machine holding ${cpName}: ${duplicate}`);
  await form.scrollIntoViewIfNeeded();
  await shot('add-machine-field-errors');
  assert.equal(await page.locator(`tr[data-mac="${added}"]`).count(), 0, 'a refused machine was added');
});

step('a worker added by MAC is assigned at once', async () => {
  const form = page.locator('#add form');
  await form.locator('input[name="mac"]').fill(added);
  await form.locator('select[name="role"]').selectOption('worker');
  await form.locator('input[name="hostname"]').fill(workerName);
  await form.locator('input[name="ip"]').fill(lanHost(workerHost));
  await Promise.all([page.waitForURL(/flash=added/), form.locator('button[type="submit"]').click()]);
  assert.equal(new URL(page.url()).pathname, `/ui/machines/${added}`);
  assert.match(await page.locator('main h1 .state').innerText(), /^assigned/);
  await page.goto(`${BASE}/ui`);
  const row = page.locator(`tr[data-mac="${added}"]`);
  assert.equal(await row.locator('.role').innerText(), 'worker');
  assert.match(await row.locator('.state').innerText(), /^assigned/);
  await shot('machines');
  await checkLayout('machines');
});

step('with --config-access oauth a device code approved on its page opens that machine\'s config only', async () => {
  // What Talos's config download does when its command line has talos.config.oauth.client_id:
  // the device request (its extra variable mac as a form field), then polls of /token.
  const form = (fields) => ({ method: 'POST', body: new URLSearchParams(fields) });
  const asked = await fetch(`${BASE}/device/code?mac=${added}`, form({ client_id: 'bootplane', mac: added }));
  if (asked.status === 404) { console.log('  (skipped: this appliance does not run --config-access oauth)'); return; }
  const askedText = await asked.text();
  assert.equal(asked.status, 200, askedText);
  const grant = JSON.parse(askedText);
  assert.match(grant.user_code, /^[A-Z]{4}-[A-Z]{4}$/);
  const poll = async () => {
    const r = await fetch(`${BASE}/token`, form({
      client_id: 'bootplane', grant_type: 'urn:ietf:params:oauth:grant-type:device_code',
      device_code: grant.device_code, mac: added,
    }));
    return { status: r.status, body: await r.json() };
  };
  const pending = await poll();
  assert.equal(pending.body.error, 'authorization_pending');
  assert.equal((await fetch(`${BASE}/config?mac=${added}`)).status, 403, 'a config without a token');

  await page.goto(grant.verification_uri_complete.replace(/^https?:\/\/[^/]+/, BASE));
  const row = page.locator('tr.highlight');
  assert.match(await row.innerText(), new RegExp(added));
  await shot('device-approvals');
  await Promise.all([page.waitForURL(/flash=approved/), row.locator('button[value="approve"]').click()]);
  assert.match(await page.locator('.flash').innerText(), /Approved/);

  const granted = await poll();
  assert.equal(granted.status, 200, JSON.stringify(granted.body));
  configToken = granted.body.access_token;
  const config = await fetch(`${BASE}/config?mac=${added}`, { headers: { authorization: `Bearer ${granted.body.access_token}` } });
  const configText = await config.text();
  assert.equal(config.status, 200, configText);
  const other = await fetch(`${BASE}/config?mac=${booted}`, { headers: { authorization: `Bearer ${granted.body.access_token}` } });
  assert.equal(other.status, 403, 'the token opened another machine\'s config');
});

step('an API token is shown once, works, and stops working when revoked', async () => {
  await page.goto(`${BASE}/ui/tokens`);
  const name = `ci-e2e-${crypto.randomBytes(2).toString('hex')}`;
  await page.fill('input[name="name"]', name);
  await Promise.all([page.waitForResponse((r) => r.request().method() === 'POST'), page.click('form[action="/ui/tokens"] button[type="submit"]')]);
  tokenText = (await page.locator('#new-token').innerText()).trim();
  assert.match(tokenText, /^bpt_\S{20,}$/);
  await shot('tokens-created');
  // A copy button puts it on the clipboard.
  const copy = page.locator('button[data-copy="#new-token"]');
  assert.ok(await copy.isVisible(), 'no copy button for the new token');
  await copy.click();
  await page.waitForFunction(() => document.querySelector('button[data-copy]').textContent === 'Copied');
  assert.equal(await page.evaluate(() => navigator.clipboard.readText()), tokenText, 'the clipboard does not hold the token');
  await checkLayout('tokens');

  const rows = (token) => fetch(`${BASE}/ui/machines/rows`, { headers: { Authorization: `Bearer ${token}` }, redirect: 'manual' });
  let response = await rows(tokenText);
  assert.equal(response.status, 200, 'the new token is refused');
  assert.ok((await response.text()).includes(booted), 'the token sees a different inventory');

  await page.goto(`${BASE}/ui/tokens`);
  assert.equal(await page.locator('#new-token').count(), 0, 'the token is shown a second time');
  assert.ok(!(await page.content()).includes(tokenText), 'the token is in the page after the first view');

  const row = page.locator('tbody tr', { hasText: name });
  assert.match(await row.locator('.state').innerText(), /active/);
  page.once('dialog', (dialog) => dialog.accept());
  await Promise.all([page.waitForResponse((r) => r.request().method() === 'POST'), row.locator('button', { hasText: 'Revoke' }).click()]);
  await page.waitForLoadState();
  const revoked = page.locator('tbody tr', { hasText: name });
  assert.match(await revoked.locator('.state').innerText(), /revoked/);
  assert.equal(await revoked.locator('button', { hasText: 'Revoke' }).count(), 0);
  await shot('tokens');

  response = await rows(tokenText);
  assert.notEqual(response.status, 200, 'a revoked token still works');
});

step('the boot assets page offers the factory download and explains refused input', async () => {
  await page.goto(`${BASE}/ui/images`);
  assert.equal(await page.locator('header nav a.current').innerText(), 'Boot assets');
  const form = page.locator('form[action="/ui/images"]');
  assert.equal(await form.locator('input[name="schematic"]').inputValue(),
    '376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba', 'the vanilla schematic is not the default');
  assert.match(await form.locator('input[name="version"]').inputValue(), /^v\d+\.\d+\.\d+/);
  await form.locator('input[name="version"]').fill('1.11');
  await Promise.all([page.waitForResponse((r) => r.request().method() === 'POST'), form.locator('button[type="submit"]').click()]);
  await page.waitForLoadState();
  assert.match(await fieldError(page.locator('form[action="/ui/images"]'), 'version').innerText(), /v1\.11\.6/);
  await shot('images');

  // A release download the server answers 404 for: its row shows at once, then "failed" (not
  // "broken", which means a tampered file) with the reason, long URL and all, inside the page.
  const failing = 'v1.12.11';
  const addForm = page.locator('form[action="/ui/images"]');
  await addForm.locator('select[name="source"]').selectOption('release');
  await addForm.locator('input[name="version"]').fill(failing);
  await Promise.all([page.waitForURL(/flash=started/), addForm.locator('button[type="submit"]').click()]);
  const row = page.locator(`tr[data-asset="${failing}-amd64"]`);
  assert.equal(await row.count(), 1, 'no row right after "Download started"');
  await row.locator('.state', { hasText: 'failed' }).waitFor({ timeout: 20000 });
  const reason = await row.locator('.field-error').innerText();
  assert.match(reason, /^download failed: .*answered 404/, reason);
  assert.equal(await row.locator('.state-asset-broken').count(), 0);
  await shot('images-failed-download');
  await checkLayout('images');
});

step('a refused patch says so in view at the top of the cluster page', async () => {
  await page.goto(`${BASE}/ui/cluster`);
  const form = page.locator('form[action="/ui/cluster/patches"]');
  await form.locator('input[name="name"]').fill('broken-yaml');
  await form.locator('textarea[name="body"]').fill('machine: [unclosed');
  const [response] = await Promise.all([
    page.waitForResponse((r) => r.request().method() === 'POST'),
    form.locator('button[value="save"]').click(),
  ]);
  assert.equal(response.status(), 422);
  await page.waitForLoadState();
  const banner = page.locator('#refused');
  assert.ok(await inViewport(banner), 'the refusal banner is not in the viewport');
  assert.match(await banner.innerText(), /Not saved/);
  assert.match(await fieldError(page.locator('form[action="/ui/cluster/patches"]'), 'body').innerText(), /./);
  await shot('cluster-patch-refused');
  await checkLayout('cluster');
});

step('the boot timeline follows a boot live, step by step, and flags the machine that gets stuck', async () => {
  await page.goto(`${BASE}/ui/cluster`);
  const marker = crypto.randomUUID();
  await page.evaluate((m) => { window.__bootplaneMarker = m; }, marker);
  const row = timelineRow(added);
  await row.waitFor();
  const reached = (phase) => row.locator(`.seg-${phase}.reached`).waitFor({ timeout: 15000 });

  // Firmware DHCP: a new boot starts (the config fetched in the step before belongs to the last one).
  await sendDiscover(added);
  await reached('dhcp');
  await row.locator('.seg-config:not(.reached)').waitFor({ timeout: 15000 });
  // iPXE's own DHCP request.
  await sendDiscover(added, true);
  await reached('ipxe');
  // The script, then the kernel, through the real boot routes.
  const script = await (await fetch(`${BASE}/machine.ipxe?mac=${added}`)).text();
  const url = (word) => script.split('\n').find((l) => l.startsWith(`${word} `)).split(' ').find((t) => t.startsWith('http'));
  assert.match(script, new RegExp(`booting Talos ${TALOS_VERSION.replaceAll('.', '\\.')}`), script);
  await reached('script');
  const kernel = await fetch(url('kernel'));
  assert.equal(kernel.status, 200);
  await kernel.arrayBuffer();
  await reached('kernel');

  // The initramfs, held partway: the row shows the bytes of the download in flight.
  const total = await slowGet(url('initrd'), 1 << 20, async () => {
    await reached('initramfs');
    const transfer = row.locator('.transfer');
    await transfer.waitFor({ timeout: 15000 });
    assert.match(await transfer.innerText(), /initramfs [\d.]+ of [\d.]+ MB/);
    const value = Number(await transfer.locator('progress').getAttribute('value'));
    assert.ok(value >= 1 && value < 100, `progress ${value}`);
    await page.locator('#timeline').screenshot({ path: path.join(SHOTS, 'timeline-download.png') });
  });
  if (INITRAMFS_BYTES) { assert.equal(total, INITRAMFS_BYTES, 'the initramfs arrived short'); }
  await row.locator('.transfer').waitFor({ state: 'detached', timeout: 15000 });

  // Talos fetches its config; its API never answers (nothing listens on the node's port 50000):
  // the wait is spelled out, then the machine is flagged with the causes for that step.
  assert.ok(configToken, 'no device token from the step before');
  const config = await fetch(`${BASE}/config?mac=${added}`, { headers: { authorization: `Bearer ${configToken}` } });
  assert.equal(config.status, 200);
  await reached('config');
  const host = lanHost(workerHost).split('/')[0].replaceAll('.', '\\.');
  await row.locator('.wait-text', { hasText: new RegExp(`probing ${host}:50000 for .*: connection refused`) }).waitFor({ timeout: 20000 });
  const flag = row.locator('.stuck-flag');
  await flag.waitFor({ timeout: 30000 });
  assert.match(await flag.innerText(), /stuck after config/);
  assert.match(await flag.innerText(), /boot log/);
  assert.ok(await row.evaluate((tr) => tr.classList.contains('stuck')), 'the stuck row is not marked');
  // The cluster says which control planes it waits for.
  assert.match(await page.locator('#timeline .wait-status').innerText(), new RegExp(`waiting for ${cpName}`));
  assert.equal(await page.evaluate(() => window.__bootplaneMarker), marker, 'the page was reloaded');
  await shot('timeline');
  await page.locator('#timeline').screenshot({ path: path.join(SHOTS, 'readme-timeline.png') });
  await checkLayout('cluster-timeline');
  // The machine's own page says the same.
  await page.goto(`${BASE}/ui/machines/${added}`);
  assert.match(await page.locator('.boot-wait').innerText(), new RegExp(`probing ${host}:50000 for .*: connection refused`));
  assert.match(await page.locator('.boot-wait .stuck-flag').innerText(), /stuck after config/);
  await checkLayout('machine-stuck');
  // The machines list as it reads now, for the README.
  await page.goto(`${BASE}/ui`);
  await page.locator('main').screenshot({ path: path.join(SHOTS, 'readme-machines.png') });
});

step('the kubeconfig downloads from the cluster page', async () => {
  const response = await page.goto(`${BASE}/ui/cluster`);
  const link = page.locator('a[href="/ui/cluster/kubeconfig"]');
  if (response.status() === 404 || (await link.count()) === 0) {
    await shot('cluster-missing');
    if (CLUSTER_PAGE_REQUIRED) {
      assert.fail(`the cluster page has no kubeconfig download (HTTP ${response.status()})`);
    }
    console.log('  SKIP: the cluster page is not there yet (BOOTPLANE_CLUSTER_PAGE=optional)');
    return;
  }
  await shot('cluster');
  const [download] = await Promise.all([page.waitForEvent('download'), link.click()]);
  const file = await download.path();
  const text = fs.readFileSync(file, 'utf8');
  assert.match(download.suggestedFilename(), /kubeconfig/);
  assert.match(text, /^apiVersion: v1$/m);
  assert.match(text, /^kind: Config$/m);
  assert.match(text, /client-certificate-data: \S{100,}/);
  assert.match(text, /client-key-data: \S{100,}/);
  if (ENDPOINT) { assert.ok(text.includes(`server: ${ENDPOINT}`), `the kubeconfig does not point at ${ENDPOINT}`); }
  fs.copyFileSync(file, path.join(SHOTS, '..', 'kubeconfig'));
});

step('logging out ends the session', async () => {
  await page.goto(`${BASE}/ui`);
  await Promise.all([page.waitForURL(/\/login/), page.click('header .who button')]);
  assert.equal(await sessionCookie(), undefined, 'the session cookie is still set');
  await page.goto(`${BASE}/ui/tokens`);
  assert.equal(new URL(page.url()).pathname, '/login');
});

// ---------------------------------------------------------------------------------------------

async function main() {
  fs.mkdirSync(SHOTS, { recursive: true });
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'bootplane-chromium-'));
  const started = Date.now();
  // A persistent context on a fresh, empty profile: Playwright refuses --user-data-dir in args.
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
    viewport: { width: 1280, height: 800 },
    acceptDownloads: true,
  });
  let failed = 0;
  try {
    context.setDefaultTimeout(10000);
    page = context.pages()[0] || (await context.newPage());
    await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: BASE });
    const consoleErrors = [];
    page.on('pageerror', (e) => consoleErrors.push(String(e)));
    // No page asks for something that is not there (a favicon, a stylesheet, a script).
    page.on('response', (r) => {
      if (r.status() === 404 && r.request().resourceType() !== 'document') { consoleErrors.push(`404 for ${r.url()}`); }
    });
    const icon = await context.request.get(`${BASE}/favicon.ico`);
    assert.equal(icon.status(), 200, 'no favicon');
    assert.match(icon.headers()['content-type'], /image\/svg\+xml/);
    for (const [i, { name, fn }] of steps.entries()) {
      if (failed) { console.log(`- skipped: ${name}`); continue; }
      const t0 = Date.now();
      try {
        await fn();
        assert.deepEqual(consoleErrors, [], 'script errors on the page');
        console.log(`ok ${i + 1} ${name} (${Date.now() - t0} ms)`);
      } catch (e) {
        failed += 1;
        console.log(`FAILED ${i + 1} ${name} (${Date.now() - t0} ms)\n  at ${page.url()}\n${e.stack || e}`);
        const said = await page.locator('.field-error, .error, .confirm').allInnerTexts().catch(() => []);
        if (said.length) { console.log(`  the page says: ${said.join(' | ')}`); }
        await shot(`failure-${i + 1}`).catch(() => {});
      }
    }
  } finally {
    await context.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
  console.log(`screenshots: ${shots.map((f) => path.relative(process.cwd(), f)).join(', ')}`);
  console.log(`${failed ? 'FAILED' : 'passed'}: ${steps.length} steps in ${Date.now() - started} ms`);
  process.exit(failed ? 1 : 0);
}

main().catch((e) => { console.error(e); process.exit(1); });
