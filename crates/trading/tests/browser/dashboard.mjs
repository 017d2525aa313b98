#!/usr/bin/env node
// Headless-browser check of the trading service dashboard.
//
//   node dashboard.mjs <base_url>        e.g. node dashboard.mjs http://127.0.0.1:8080
//
// Opens <base_url>/ in Debian's chromium (env CHROMIUM, default /usr/bin/chromium)
// via playwright-core, then waits (bounded by DASHBOARD_TIMEOUT_MS, default
// 20000) until the page has drawn live data:
//   * svg[data-chart="requests"] has a series whose data-last > 0, and
//   * svg[data-chart="hit_rate"] has at least one series whose data-last > 0;
// in that same DOM snapshot svg[data-chart="latency"] must have a
// path[data-series="p99"] with a numeric data-last.
// It then keeps watching for DASHBOARD_SOAK_POLLS (default 2) more successful
// polls (#conn[data-polls]) so errors from later redraws are caught too.
// Any console error, uncaught page error, failed request or HTTP >= 400
// response is a failure.
//
// Prints one JSON line and exits 0 ({"ok":true,...}) or 1 ({"ok":false,...}).
// Exit 2 is a usage error. If DASHBOARD_SCREENSHOT is set, a full-page
// screenshot is written there (on failure too, when the page got that far).

import { chromium } from 'playwright-core';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const baseArg = process.argv[2] || process.env.BASE_URL;
if (!baseArg) {
  console.error('usage: node dashboard.mjs <base_url>');
  process.exit(2);
}
const base = baseArg.replace(/\/+$/, '');
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
const waitMs = Number(process.env.DASHBOARD_TIMEOUT_MS) || 20_000;
const soakPolls = Number.isInteger(Number(process.env.DASHBOARD_SOAK_POLLS)) && process.env.DASHBOARD_SOAK_POLLS !== ''
  ? Number(process.env.DASHBOARD_SOAK_POLLS)
  : 2;
const screenshotPath = process.env.DASHBOARD_SCREENSHOT || '';
const ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

const started = Date.now();
const consoleErrors = [];
const pageErrors = [];
const failedRequests = [];
const badResponses = [];
const failures = [];
let summary = {};
let context = null;
let userDataDir = null;
let recording = true;

function finish(ok) {
  const out = ok
    ? { ok: true, ...summary, console_errors: consoleErrors, elapsed_ms: Date.now() - started }
    : {
        ok: false,
        failures,
        console_errors: consoleErrors,
        page_errors: pageErrors,
        failed_requests: failedRequests,
        bad_responses: badResponses,
        ...summary,
        elapsed_ms: Date.now() - started,
      };
  process.stdout.write(JSON.stringify(out) + '\n');
}

// Hard stop in case the browser itself hangs (launch, navigation, close).
const watchdog = setTimeout(() => {
  failures.push(`watchdog: gave up after ${waitMs + 45_000} ms`);
  finish(false);
  process.exit(1);
}, waitMs + 45_000);
watchdog.unref();

// Rejects as soon as the page reports an error, so the wait fails fast.
let signalError;
const errorSeen = new Promise((_, reject) => { signalError = reject; });
errorSeen.catch(() => {});

try {
  userDataDir = await mkdtemp(join(tmpdir(), 'larder-dashboard-'));
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath,
    headless: true,
    args: ARGS,
    viewport: { width: 1440, height: 1000 },
    timeout: 30_000,
  });
  const page = context.pages()[0] || (await context.newPage());

  page.on('console', (msg) => {
    if (!recording || msg.type() !== 'error') return;
    const loc = msg.location();
    consoleErrors.push(loc && loc.url ? `${msg.text()} (${loc.url}:${loc.lineNumber})` : msg.text());
    signalError(new Error('console error'));
  });
  page.on('pageerror', (err) => {
    if (!recording) return;
    pageErrors.push(String((err && err.stack) || err));
    signalError(new Error('page error'));
  });
  page.on('requestfailed', (req) => {
    if (!recording) return;
    const why = req.failure() ? req.failure().errorText : 'failed';
    failedRequests.push(`${req.method()} ${req.url()}: ${why}`);
    signalError(new Error('request failed'));
  });
  page.on('response', (res) => {
    if (recording && res.status() >= 400) {
      badResponses.push(`${res.status()} ${res.request().method()} ${res.url()}`);
      signalError(new Error('bad response'));
    }
  });

  const resp = await page.goto(`${base}/`, { waitUntil: 'load', timeout: 15_000 });
  if (!resp || !resp.ok()) {
    throw new Error(`GET ${base}/ returned ${resp ? resp.status() : 'no response'}`);
  }
  const ctype = resp.headers()['content-type'] || '';
  if (!ctype.includes('text/html')) {
    failures.push(`GET / content-type is ${JSON.stringify(ctype)}, expected text/html`);
  }

  // Reads everything the test cares about from the DOM in one go.
  // Returns the snapshot once the live-data condition holds, else false.
  const probe = (wantReady) => {
    const num = (v) => (v === null || v === undefined || v === '' ? null : Number.isFinite(Number(v)) ? Number(v) : null);
    const charts = {};
    for (const svg of document.querySelectorAll('svg[data-chart]')) {
      const series = {};
      for (const p of svg.querySelectorAll('path[data-series]')) {
        series[p.getAttribute('data-series')] = p.getAttribute('data-last');
      }
      charts[svg.getAttribute('data-chart')] = series;
    }
    const tiles = {};
    for (const t of document.querySelectorAll('[data-tile]')) tiles[t.getAttribute('data-tile')] = t.textContent.trim();
    const conn = document.getElementById('conn');
    const snap = {
      polls: conn ? Number(conn.getAttribute('data-polls')) || 0 : 0,
      charts,
      tiles,
      status: conn ? conn.getAttribute('data-status') : null,
      status_text: conn ? conn.textContent.trim() : null,
    };
    if (!wantReady) return snap;
    const req = Object.values(charts.requests || {}).map(num);
    const hits = Object.values(charts.hit_rate || {}).map(num);
    const ready = req.some((v) => v !== null && v > 0) && hits.some((v) => v !== null && v > 0);
    return ready ? snap : false;
  };

  let snap;
  try {
    const handle = await Promise.race([
      page.waitForFunction(probe, true, { timeout: waitMs, polling: 200 }),
      errorSeen,
    ]);
    snap = await handle.jsonValue();
  } catch (err) {
    const last = await page.evaluate(probe, false).catch(() => null);
    if (last) summary = { last_seen: last };
    throw new Error(
      /Timeout/i.test(String(err && err.message))
        ? `timed out after ${waitMs} ms waiting for requests > 0 and a hit_rate series > 0`
        : `page reported an error while waiting: ${err && err.message}`,
    );
  }

  // Soak: a few more redraws must happen without any error.
  if (soakPolls > 0) {
    try {
      await Promise.race([
        page.waitForFunction(
          (n) => Number(document.getElementById('conn').getAttribute('data-polls')) >= n,
          snap.polls + soakPolls,
          { timeout: Math.max(5_000, Math.min(waitMs, 15_000)), polling: 200 },
        ),
        errorSeen,
      ]);
    } catch (err) {
      failures.push(
        /Timeout/i.test(String(err && err.message))
          ? `page stopped updating: fewer than ${soakPolls} more successful polls after live data appeared`
          : `page reported an error after live data appeared: ${err && err.message}`,
      );
    }
  }

  const num = (v) => (v === null || v === undefined || v === '' ? null : Number(v));
  const rps = Math.max(...Object.values(snap.charts.requests).map((v) => num(v) ?? -Infinity));
  const hitRate = {};
  for (const [family, v] of Object.entries(snap.charts.hit_rate || {})) hitRate[family] = num(v);
  const latency = snap.charts.latency || {};
  if (!('p99' in latency)) {
    failures.push('latency chart has no path[data-series="p99"]');
  } else if (num(latency.p99) === null || !Number.isFinite(num(latency.p99))) {
    failures.push(`latency p99 data-last is not numeric: ${JSON.stringify(latency.p99)}`);
  }
  for (const name of ['hit_rate', 'requests', 'latency', 'db_queries', 'write_behind_lag']) {
    if (!(name in snap.charts)) failures.push(`missing svg[data-chart="${name}"]`);
  }
  if (snap.status !== 'live') failures.push(`status pill is ${JSON.stringify(snap.status_text)}, expected live`);

  summary = {
    requests_per_sec: rps,
    hit_rate: hitRate,
    p99_ms: num(latency.p99),
    tiles: snap.tiles,
  };

  if (screenshotPath) await page.screenshot({ path: screenshotPath, fullPage: true });
} catch (err) {
  // Playwright appends a multi-line call log; keep the first line.
  failures.push(String((err && err.message) || err).split('\n')[0]);
  if (screenshotPath && context) {
    const page = context.pages()[0];
    if (page) await page.screenshot({ path: screenshotPath, fullPage: true }).catch(() => {});
  }
}

// Verdict is taken before closing: closing aborts in-flight polls.
if (consoleErrors.length) failures.push(`${consoleErrors.length} console error(s)`);
if (pageErrors.length) failures.push(`${pageErrors.length} uncaught page error(s)`);
if (failedRequests.length) failures.push(`${failedRequests.length} failed request(s)`);
if (badResponses.length) failures.push(`${badResponses.length} HTTP error response(s)`);
const ok = failures.length === 0;
// Stop recording: closing the browser aborts in-flight polls.
recording = false;

if (context) await context.close().catch(() => {});
if (userDataDir) await rm(userDataDir, { recursive: true, force: true }).catch(() => {});
finish(ok);
process.exit(ok ? 0 : 1);
