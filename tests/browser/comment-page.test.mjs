// The comment page in a real browser: Debian's headless Chromium, driven by
// playwright-core, against a real stompede and the comment API example, on
// free loopback ports.
//
//   cd tests/browser && npm ci && node --test
//
// Builds `stompede` and the `comment_api` example with cargo first (debug;
// STOMPEDE_TEST_PROFILE=release for release), in CARGO_TARGET_DIR or the
// workspace's target/. STOMPEDE_BIN / COMMENT_API_BIN skip the build.
// Logs and screenshots go to tests/browser/artifacts/.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, openSync, closeSync } from 'node:fs';
import { connect as tcpConnect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import initSqlJs from 'sql.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '../..');
const artifacts = path.join(here, 'artifacts');
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const TOKEN = 'browser-test-token';
const ARTICLE = '42';
/**
 * How long a comment may take to show on every open page before the test
 * calls it lost. Generous on purpose: the path runs through a debug comment
 * API, SQLite, a debug broker and headless Chromium on a shared 2-core box.
 * The latency itself is reported (t.diagnostic), not asserted: speed belongs
 * to the load tool, not to this test.
 */
const DELIVERY_DEADLINE_MS = 30000;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** Paths of the two binaries, building them with cargo unless given. */
function binaries() {
  if (process.env.STOMPEDE_BIN && process.env.COMMENT_API_BIN) {
    return { stompede: process.env.STOMPEDE_BIN, commentApi: process.env.COMMENT_API_BIN };
  }
  const release = process.env.STOMPEDE_TEST_PROFILE === 'release';
  const args = ['build', '--bin', 'stompede', '--example', 'comment_api', ...(release ? ['--release'] : [])];
  execFileSync('cargo', args, { cwd: repo, stdio: ['ignore', 'inherit', 'inherit'], timeout: 20 * 60 * 1000 });
  const metadata = JSON.parse(execFileSync('cargo', ['metadata', '--format-version', '1', '--no-deps'], { cwd: repo, maxBuffer: 64 << 20 }));
  const dir = path.join(metadata.target_directory, release ? 'release' : 'debug');
  return { stompede: path.join(dir, 'stompede'), commentApi: path.join(dir, 'examples', 'comment_api') };
}

/** Every child we started, killed if the test process exits early (timeout, ^C). */
const children = new Set();
process.once('exit', () => { for (const child of children) child.kill('SIGKILL'); });
for (const signal of ['SIGINT', 'SIGTERM']) process.once(signal, () => process.exit(128 + (signal === 'SIGINT' ? 2 : 15)));

/** A child process whose output goes to artifacts/NAME.log. */
class Service {
  constructor(name, command, args) {
    this.name = name;
    this.command = command;
    this.args = args;
    this.child = null;
    this.runs = 0;
  }

  start() {
    this.runs += 1;
    const log = openSync(path.join(artifacts, `${this.name}.${this.runs}.log`), 'w');
    this.child = spawn(this.command, this.args, {
      stdio: ['ignore', log, log],
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'info', RUST_BACKTRACE: '1' },
    });
    closeSync(log);
    const child = this.child;
    children.add(child);
    this.exited = new Promise((resolve) => child.once('exit', (code, signal) => { children.delete(child); resolve({ code, signal }); }));
  }

  /** SIGTERM, then SIGKILL after `graceMs`. */
  async stop(graceMs = 10000) {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
    const result = await this.exited;
    clearTimeout(timer);
    return result;
  }
}

async function waitForHttp(url, service, timeoutMs = 30000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (service.child.exitCode !== null) throw new Error(`${service.name} exited with ${service.child.exitCode}; see artifacts/${service.name}.${service.runs}.log`);
    try {
      const response = await fetch(url, { signal: AbortSignal.timeout(1000) });
      if (response.ok) return;
    } catch { /* not up yet */ }
    if (Date.now() > deadline) throw new Error(`${url} not answering after ${timeoutMs} ms`);
    await sleep(100);
  }
}

/** The texts and ids of the comments a page shows, top to bottom. */
const shownComments = (page) =>
  page.$$eval('#comments .comment', (items) =>
    items.map((li) => ({ id: Number(li.dataset.commentId), source: li.dataset.source, text: li.querySelector('.comment__text').textContent })));

/** Waits until `page` shows a comment with `text`; answers it. */
async function waitForComment(page, text, timeout) {
  const handle = await page.waitForFunction(
    (wanted) => [...document.querySelectorAll('#comments .comment')].find((li) => li.querySelector('.comment__text').textContent === wanted)?.dataset,
    text,
    // A background tab may check less often; the delivery time itself is
    // measured inside the page (recordArrivals).
    { timeout, polling: 50 },
  );
  const dataset = await handle.jsonValue();
  return { id: Number(dataset.commentId), source: dataset.source };
}

/**
 * Notes, inside the page, when each comment element appears (Date.now(), the
 * same clock as the test's), so delivery time is measured where it happens.
 */
const recordArrivals = (page) =>
  page.evaluate(() => {
    window.__arrivals = {};
    new MutationObserver((records) => {
      for (const record of records) {
        for (const node of record.addedNodes) {
          const text = node.querySelector?.('.comment__text')?.textContent;
          if (text !== undefined) window.__arrivals[text] ??= Date.now();
        }
      }
    }).observe(document.getElementById('comments'), { childList: true });
  });

const arrivalTime = (page, text) => page.evaluate((wanted) => window.__arrivals[wanted], text);

/** Records every state the status pill goes through, from now on. */
const recordStates = (page) =>
  page.evaluate(() => {
    const status = document.getElementById('status');
    window.__states = [status.dataset.state];
    new MutationObserver(() => window.__states.push(status.dataset.state)).observe(status, { attributes: true, attributeFilter: ['data-state'] });
  });

async function commentsInDb(dbPath) {
  const SQL = await initSqlJs();
  const db = new SQL.Database(readFileSync(dbPath));
  try {
    const result = db.exec('SELECT id, article, author, text FROM comments ORDER BY id');
    return (result[0]?.values ?? []).map(([id, article, author, text]) => ({ id, article, author, text }));
  } finally {
    db.close();
  }
}

async function postFromNode(apiBase, author, text) {
  const response = await fetch(`${apiBase}/api/articles/${ARTICLE}/comments`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ author, text }),
  });
  assert.equal(response.status, 201, await response.clone().text());
  return response.json();
}

describe('comment page in headless Chromium', { timeout: 15 * 60 * 1000 }, () => {
  let stompede;
  let commentApi;
  let context;
  let pageA;
  let pageB;
  let apiBase;
  let dbPath;
  let scratch;
  const pageErrors = [];

  before(async () => {
    mkdirSync(artifacts, { recursive: true });
    scratch = mkdtempSync(path.join(tmpdir(), 'stompede-browser-'));
    dbPath = path.join(scratch, 'comments.sqlite3');
    const bins = binaries();
    const brokerPort = await freePort();
    const apiPort = await freePort();
    apiBase = `http://127.0.0.1:${apiPort}`;
    stompede = new Service('stompede', bins.stompede, [
      '--listen', `127.0.0.1:${brokerPort}`,
      '--api-token', TOKEN,
      '--allowed-origin', apiBase,
      '--shutdown-grace', '1',
    ]);
    commentApi = new Service('comment_api', bins.commentApi, [
      '--listen', `127.0.0.1:${apiPort}`,
      '--stompede-url', `http://127.0.0.1:${brokerPort}`,
      '--api-token', TOKEN,
      '--db', dbPath,
      '--page-dir', path.join(repo, 'examples', 'comment-page'),
    ]);
    stompede.start();
    commentApi.start();
    await waitForHttp(`http://127.0.0.1:${brokerPort}/healthz`, stompede);
    await waitForHttp(`${apiBase}/healthz`, commentApi);
    const vendor = await fetch(`${apiBase}/vendor/stomp.umd.min.js`);
    assert.equal(vendor.status, 200, 'the stompjs bundle is served; run `npm ci` in examples/comment-page');

    context = await chromium.launchPersistentContext(path.join(scratch, 'chromium-profile'), {
      executablePath: CHROMIUM,
      headless: true,
      args: [
        '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync',
      ],
      viewport: { width: 900, height: 1200 },
      timeout: 60000,
    });
    for (const page of [await context.newPage(), await context.newPage()]) {
      page.on('pageerror', (error) => pageErrors.push(error.message));
    }
    [pageA, pageB] = context.pages().slice(-2);
    // Two earlier comments, so the pages load some history.
    await postFromNode(apiBase, 'Marta Kowalski', 'Took the Vienna–Brussels sleeper last month. Woke up rested, and no security queue!');
    await postFromNode(apiBase, 'Tom', 'Still waiting for a direct one from Amsterdam to Barcelona…');
    await Promise.all([pageA, pageB].map((page) => page.goto(`${apiBase}/?article=${ARTICLE}`)));
    await Promise.all([pageA, pageB].map(recordArrivals));
  });

  after(async () => {
    await context?.close().catch(() => {});
    await commentApi?.stop();
    await stompede?.stop();
    if (scratch) rmSync(scratch, { recursive: true, force: true });
  });

  it('loads the latest comments, connects both pages and shows 2 readers', async () => {
    for (const page of [pageA, pageB]) {
      const shown = await shownComments(page);
      assert.deepEqual(shown.map((comment) => [comment.id, comment.source]), [[2, 'history'], [1, 'history']]);
    }
    for (const page of [pageA, pageB]) {
      await page.waitForSelector('#status[data-state="connected"]', { timeout: 15000 });
    }
    for (const page of [pageA, pageB]) {
      await page.waitForSelector('#readers[data-count="2"]', { timeout: 10000 });
      assert.equal(await page.textContent('#readers-text'), '2 reading now');
    }
  });

  it('delivers a comment posted on one page to both, and stores it in SQLite', async (t) => {
    const text = 'Swapped my Lisbon flight for the night train. Best decision this year — the dining car alone was worth it.';
    await pageA.bringToFront();
    await pageA.fill('#author', 'Ada Brennan');
    await pageA.fill('#text', text);
    const started = Date.now();
    await pageA.click('#submit');
    const [onA, onB] = await Promise.all([waitForComment(pageA, text, DELIVERY_DEADLINE_MS), waitForComment(pageB, text, DELIVERY_DEADLINE_MS)]);
    for (const page of [pageA, pageB]) {
      const elapsed = (await arrivalTime(page, text)) - started;
      t.diagnostic(`${page === pageA ? 'poster' : 'reader'} page showed it ${elapsed} ms after the click`);
    }
    assert.equal(onA.id, onB.id);
    assert.equal(onB.source, 'live', 'the other page got it over STOMP');

    const stored = (await commentsInDb(dbPath)).filter((row) => row.text === text);
    assert.deepEqual(stored, [{ id: onA.id, article: ARTICLE, author: 'Ada Brennan', text }]);
  });

  it('reconnects both pages after stompede restarts, catches up, and keeps receiving', async (t) => {
    await Promise.all([pageA, pageB].map(recordStates));
    const result = await stompede.stop();
    assert.equal(result.code, 0, `stompede exited cleanly on SIGTERM (${JSON.stringify(result)})`);
    for (const page of [pageA, pageB]) {
      await page.waitForSelector('#status:not([data-state="connected"])', { timeout: 5000 });
    }
    await pageB.locator('.comments').screenshot({ path: path.join(artifacts, 'comment-page-reconnecting.png') });

    // Written while the broker is down: stored, not delivered live; the pages
    // fetch it when they reconnect.
    const missedText = 'Is the live feed down? My comment went through anyway.';
    const missed = await postFromNode(apiBase, 'Grace', missedText);
    assert.equal(missed.published, false);

    stompede.start();
    for (const page of [pageA, pageB]) {
      await page.waitForSelector('#status[data-state="connected"]', { timeout: 20000 });
      const states = await page.evaluate(() => window.__states);
      assert.ok(states.includes('reconnecting'), `went through reconnecting: ${states}`);
      assert.equal((await waitForComment(page, missedText, 5000)).source, 'catch-up');
      await page.waitForSelector('#readers[data-count="2"]', { timeout: 10000 });
    }

    const text = 'And we are live again. Anyone tried the new Berlin–Paris line?';
    const started = Date.now();
    const posted = await postFromNode(apiBase, 'Linus', text);
    assert.equal(posted.published, true);
    assert.equal(posted.subscribers, 2);
    for (const page of [pageA, pageB]) {
      const shown = await waitForComment(page, text, DELIVERY_DEADLINE_MS);
      assert.equal(shown.id, posted.comment.id);
      assert.equal(shown.source, 'live');
      const elapsed = (await arrivalTime(page, text)) - started;
      t.diagnostic(`${page === pageA ? 'poster' : 'reader'} page showed it ${elapsed} ms after the POST`);
    }
  });

  it('shows every stored comment exactly once', async () => {
    const stored = await commentsInDb(dbPath);
    for (const page of [pageA, pageB]) {
      const shown = await shownComments(page);
      const ids = shown.map((comment) => comment.id);
      assert.equal(new Set(ids).size, ids.length, `no duplicates: ${ids}`);
      assert.deepEqual(ids, stored.map((row) => row.id).reverse(), 'newest first, all of them');
      assert.equal(await page.textContent('#comment-count'), String(stored.length));
    }
    await pageB.screenshot({ path: path.join(artifacts, 'comment-page.png'), fullPage: true });
    await pageA.screenshot({ path: path.join(artifacts, 'comment-page-poster.png'), fullPage: true });
    assert.deepEqual(pageErrors, [], 'no JavaScript errors on the pages');
  });
});

/**
 * A TCP proxy on loopback in front of stompede: `cut()` closes it and
 * destroys every connection through it (the page's WebSocket dies with no
 * close frame, as on a phone in a lift); `restore()` listens again.
 */
async function tcpProxy(listenPort, targetPort) {
  const sockets = new Set();
  let server = null;
  const listen = () => new Promise((resolve, reject) => {
    server = createServer((client) => {
      const upstream = tcpConnect(targetPort, '127.0.0.1');
      const pair = [client, upstream];
      for (const socket of pair) {
        sockets.add(socket);
        socket.on('error', () => {});
        socket.on('close', () => { for (const other of pair) { other.destroy(); sockets.delete(other); } });
      }
      client.pipe(upstream);
      upstream.pipe(client);
    });
    server.once('error', reject);
    server.listen(listenPort, '127.0.0.1', resolve);
  });
  await listen();
  return {
    async cut() {
      const closed = new Promise((resolve) => server.close(resolve));
      for (const socket of sockets) socket.destroy();
      await closed;
    },
    restore: listen,
  };
}

describe('comment page resuming through a cut connection', { timeout: 10 * 60 * 1000 }, () => {
  let stompede;
  let commentApi;
  let context;
  let page;
  let proxy;
  let apiBase;
  let scratch;
  const pageErrors = [];

  before(async () => {
    mkdirSync(artifacts, { recursive: true });
    scratch = mkdtempSync(path.join(tmpdir(), 'stompede-resume-'));
    const bins = binaries();
    const [brokerPort, proxyPort, apiPort] = [await freePort(), await freePort(), await freePort()];
    apiBase = `http://127.0.0.1:${apiPort}`;
    stompede = new Service('stompede-resume', bins.stompede, [
      '--listen', `127.0.0.1:${brokerPort}`,
      '--api-token', TOKEN,
      '--allowed-origin', apiBase,
      '--shutdown-grace', '1',
    ]);
    commentApi = new Service('comment_api-resume', bins.commentApi, [
      '--listen', `127.0.0.1:${apiPort}`,
      '--stompede-url', `http://127.0.0.1:${brokerPort}`,
      '--stompede-ws-url', `ws://127.0.0.1:${proxyPort}/ws`,
      '--api-token', TOKEN,
      '--db', path.join(scratch, 'comments.sqlite3'),
      '--page-dir', path.join(repo, 'examples', 'comment-page'),
    ]);
    stompede.start();
    commentApi.start();
    await waitForHttp(`http://127.0.0.1:${brokerPort}/healthz`, stompede);
    await waitForHttp(`${apiBase}/healthz`, commentApi);
    proxy = await tcpProxy(proxyPort, brokerPort);
    context = await chromium.launchPersistentContext(path.join(scratch, 'chromium-profile'), {
      executablePath: CHROMIUM,
      headless: true,
      args: [
        '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync',
      ],
      timeout: 60000,
    });
    page = context.pages()[0] ?? await context.newPage();
    page.on('pageerror', (error) => pageErrors.push(error.message));
  });

  after(async () => {
    await context?.close().catch(() => {});
    await proxy?.cut().catch(() => {});
    await commentApi?.stop();
    await stompede?.stop();
    if (scratch) rmSync(scratch, { recursive: true, force: true });
  });

  it('gets the comments posted while its connection was cut from stompede, once, in order, without a refetch', async () => {
    await postFromNode(apiBase, 'Marta Kowalski', 'First!');
    await page.goto(`${apiBase}/?article=${ARTICLE}`);
    await page.waitForSelector('#status[data-state="connected"]', { timeout: 15000 });
    const before = await postFromNode(apiBase, 'Tom', 'Live before the cut');
    assert.equal((await waitForComment(page, 'Live before the cut', DELIVERY_DEADLINE_MS)).source, 'live');

    // From here on, any GET of the article from the comment API is a refetch.
    const refetches = [];
    page.on('request', (request) => {
      if (request.method() === 'GET' && new URL(request.url()).pathname === `/api/articles/${ARTICLE}`) {
        refetches.push(request.url());
      }
    });
    await recordStates(page);
    await proxy.cut();
    await page.waitForSelector('#status:not([data-state="connected"])', { timeout: 15000 });
    const missed = [];
    for (const text of ['Posted during the outage, one', 'two', 'and three']) {
      const posted = await postFromNode(apiBase, 'Grace', text);
      assert.equal(posted.published, true, 'stompede itself is up');
      missed.push(posted.comment.id);
    }
    await proxy.restore();
    await page.waitForSelector('#status[data-state="connected"]', { timeout: 30000 });
    for (const text of ['Posted during the outage, one', 'two', 'and three']) {
      assert.equal((await waitForComment(page, text, DELIVERY_DEADLINE_MS)).source, 'live', `${text}: replayed by stompede`);
    }
    const after = await postFromNode(apiBase, 'Linus', 'Live after the resume');
    assert.equal((await waitForComment(page, 'Live after the resume', DELIVERY_DEADLINE_MS)).source, 'live');

    const states = await page.evaluate(() => window.__states);
    assert.ok(states.includes('reconnecting'), `went through reconnecting: ${states}`);
    assert.deepEqual(refetches, [], 'history covered the gap: no refetch from the comment API');
    const ids = (await shownComments(page)).map((comment) => comment.id);
    const expected = [after.comment.id, ...missed.reverse(), before.comment.id, 1];
    assert.deepEqual(ids, expected, 'every comment once, newest first');
    await page.screenshot({ path: path.join(artifacts, 'comment-page-resumed.png'), fullPage: true });
    assert.deepEqual(pageErrors, [], 'no JavaScript errors on the page');
  });
});
