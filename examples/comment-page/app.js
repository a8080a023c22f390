// The live comment page: loads the latest comments from the comment API,
// then keeps one STOMP connection (via @stomp/stompjs) to stompede and shows
// every comment published to the article's destination.
//
// - Every comment is shown once: `comments` is keyed by the comment's id,
//   whether it came from the page load, a live MESSAGE, our own POST's answer
//   or the catch-up after a reconnect.
// - Reconnects use exponential backoff with jitter, so that after a broker
//   restart thousands of readers do not all come back in the same instant.
// - The reader count is polled from the comment API, which asks stompede.
(() => {
  'use strict';

  /** Backoff: 1st retry after 0.5-1 s, doubling, capped at 15 s (equal jitter). */
  const BACKOFF_BASE_MS = 1000;
  const BACKOFF_CAP_MS = 15000;
  const READERS_POLL_MS = 3000;

  const article = new URLSearchParams(location.search).get('article') || '42';
  const api = `/api/articles/${encodeURIComponent(article)}`;

  const $ = (id) => document.getElementById(id);
  const els = {
    status: $('status'), statusText: $('status-text'),
    readers: $('readers'), readersText: $('readers-text'),
    list: $('comments'), empty: $('empty'), count: $('comment-count'),
    form: $('comment-form'), author: $('author'), text: $('text'),
    submit: $('submit'), formMessage: $('form-message'),
  };

  /** id -> comment; the one source of truth for "have we shown this?". */
  const comments = new Map();
  let config = null; // { destination, ws_url }
  let everConnected = false;
  let attempt = 0; // connection attempts since the last successful CONNECTED
  let wake = null; // cuts a backoff wait short (the browser came back online)
  let countdown = null;
  // Where the live stream stands: the last x-offset and x-epoch seen, to resume from.
  let position = null;
  let subscriptions = 0;

  // ---- rendering ----------------------------------------------------------

  function setState(state, text) {
    els.status.dataset.state = state;
    els.statusText.textContent = text;
  }

  function avatarColor(name) {
    let hash = 0;
    for (const ch of name) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
    return `hsl(${hash % 360} 55% 45%)`;
  }

  function initials(name) {
    const parts = name.trim().split(/\s+/).filter(Boolean);
    return ((parts[0]?.[0] ?? '?') + (parts.length > 1 ? parts[parts.length - 1][0] : '')).toUpperCase();
  }

  function relativeTime(ms) {
    const seconds = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (seconds < 45) return 'just now';
    const minutes = Math.round(seconds / 60);
    if (minutes < 60) return `${minutes} min ago`;
    const hours = Math.round(minutes / 60);
    if (hours < 24) return `${hours} h ago`;
    return new Date(ms).toLocaleDateString();
  }

  function renderComment(comment, source) {
    const li = document.createElement('li');
    li.className = 'comment';
    li.id = `comment-${comment.id}`;
    li.dataset.commentId = String(comment.id);
    li.dataset.source = source;
    const avatar = document.createElement('div');
    avatar.className = 'avatar';
    avatar.style.background = avatarColor(comment.author);
    avatar.textContent = initials(comment.author);
    const body = document.createElement('div');
    const meta = document.createElement('div');
    meta.className = 'comment__meta';
    const author = document.createElement('span');
    author.className = 'comment__author';
    author.textContent = comment.author;
    const time = document.createElement('time');
    time.className = 'comment__time';
    time.dataset.ms = String(comment.created_at);
    time.dateTime = new Date(comment.created_at).toISOString();
    time.title = new Date(comment.created_at).toLocaleString();
    time.textContent = relativeTime(comment.created_at);
    meta.append(author, time);
    const text = document.createElement('p');
    text.className = 'comment__text';
    text.textContent = comment.text;
    body.append(meta, text);
    li.append(avatar, body);
    if (source !== 'history') li.classList.add('comment--new');
    return li;
  }

  /** Shows `comment` unless it is already shown; newest first. */
  function addComment(comment, source) {
    if (!comment || typeof comment.id !== 'number' || comments.has(comment.id)) return false;
    comments.set(comment.id, comment);
    const li = renderComment(comment, source);
    // Insert before the first shown comment with a smaller id.
    let before = null;
    for (const node of els.list.children) {
      if (Number(node.dataset.commentId) < comment.id) { before = node; break; }
    }
    els.list.insertBefore(li, before);
    els.count.textContent = String(comments.size);
    els.empty.hidden = comments.size > 0;
    return true;
  }

  setInterval(() => {
    for (const time of els.list.querySelectorAll('time[data-ms]')) {
      time.textContent = relativeTime(Number(time.dataset.ms));
    }
  }, 30000);

  // ---- the comment API ----------------------------------------------------

  async function loadArticle(source) {
    const response = await fetch(api, { cache: 'no-store' });
    if (!response.ok) throw new Error(`comment API answered ${response.status}`);
    const page = await response.json();
    for (const comment of page.comments) addComment(comment, source);
    return page;
  }

  async function refreshReaders() {
    try {
      const response = await fetch(`${api}/readers`, { cache: 'no-store' });
      if (!response.ok) throw new Error(String(response.status));
      const { readers } = await response.json();
      els.readers.dataset.count = String(readers);
      els.readersText.textContent = `${readers.toLocaleString()} reading now`;
    } catch {
      els.readers.dataset.count = '';
      els.readersText.textContent = '– reading now';
    }
  }

  els.form.action = `${api}/comments`;
  els.author.value = localStorage.getItem('comment-author') || '';
  els.form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const text = els.text.value.trim();
    if (!text) return;
    const author = els.author.value.trim();
    localStorage.setItem('comment-author', author);
    els.submit.disabled = true;
    els.formMessage.classList.remove('is-error');
    els.formMessage.textContent = 'Posting…';
    try {
      const response = await fetch(`${api}/comments`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ author, text }),
      });
      const answer = await response.json().catch(() => ({}));
      if (!response.ok) throw new Error(answer.error || `comment API answered ${response.status}`);
      // Usually the live MESSAGE is already here; if not, this shows it now
      // and the MESSAGE is dropped as a duplicate.
      addComment(answer.comment, 'own');
      els.text.value = '';
      els.formMessage.textContent = answer.published
        ? `Posted — delivered live to ${answer.subscribers} reader${answer.subscribers === 1 ? '' : 's'}.`
        : 'Posted. Live delivery is delayed; readers will see it when they reconnect.';
    } catch (error) {
      els.formMessage.classList.add('is-error');
      els.formMessage.textContent = `Could not post: ${error.message}`;
    } finally {
      els.submit.disabled = false;
    }
  });

  // ---- the live connection --------------------------------------------------

  function backoffDelay(n) {
    const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** (n - 1));
    return ceiling / 2 + Math.random() * (ceiling / 2);
  }

  function waitBeforeRetry(ms) {
    const until = Date.now() + ms;
    const tick = () => setState('reconnecting', `Reconnecting in ${Math.max(0, (until - Date.now()) / 1000).toFixed(1)} s`);
    tick();
    clearInterval(countdown);
    countdown = setInterval(tick, 200);
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done() { clearTimeout(timer); clearInterval(countdown); wake = null; resolve(); }
      wake = done;
    });
  }

  window.addEventListener('online', () => wake?.());
  window.addEventListener('offline', () => setState('offline', 'Offline'));

  function connect() {
    const client = new StompJs.Client({
      brokerURL: config.ws_url,
      heartbeatIncoming: 10000,
      heartbeatOutgoing: 10000,
      connectionTimeout: 8000,
      // stompjs waits this long after a close, then calls beforeConnect, which
      // adds our jittered, growing wait.
      reconnectDelay: 100,
      beforeConnect: async () => {
        // Every retry waits, the first one after a drop too: when a broker
        // restarts, its readers come back spread over the backoff window.
        attempt += 1;
        const retry = everConnected ? attempt : attempt - 1;
        if (retry > 0) await waitBeforeRetry(backoffDelay(retry));
        setState(everConnected ? 'reconnecting' : 'connecting', everConnected ? 'Reconnecting…' : 'Connecting…');
      },
      onConnect: () => {
        attempt = 0;
        setState('connected', 'Live');
        const reconnected = everConnected;
        // After a reconnect, ask stompede for what was published while we
        // were away (resume from the last offset seen); only if its history
        // no longer covers the gap, fetch the comments from the comment API.
        const headers = { receipt: `subscribed-${++subscriptions}` };
        const resuming = reconnected && position !== null;
        if (resuming) {
          headers['x-since-offset'] = String(position.offset);
          headers['x-since-epoch'] = position.epoch;
        }
        client.watchForReceipt(headers.receipt, (receipt) => {
          // Messages replayed from history came before the RECEIPT. A new
          // epoch (stompede restarted, or forgot this history) starts where
          // the RECEIPT says.
          const epoch = receipt.headers['x-epoch'];
          if (epoch && (position === null || position.epoch !== epoch)) {
            position = { offset: Number(receipt.headers['x-offset']), epoch };
          }
          if (reconnected && !(resuming && receipt.headers['x-recovered'] === 'true')) {
            loadArticle('catch-up').catch((error) => console.warn('catch-up failed', error));
          }
        });
        client.subscribe(config.destination, (message) => {
          if (message.headers['x-offset']) {
            position = { offset: Number(message.headers['x-offset']), epoch: message.headers['x-epoch'] };
          }
          try {
            addComment(JSON.parse(message.body), 'live');
          } catch (error) {
            console.warn('ignoring a message that is not a comment', error);
          }
        }, headers);
        everConnected = true;
        refreshReaders();
      },
      onStompError: (frame) => console.warn('STOMP error:', frame.headers.message),
      onWebSocketClose: () => {
        if (els.status.dataset.state === 'connected') setState('reconnecting', 'Reconnecting…');
        refreshReaders();
      },
    });
    client.activate();
    window.stompClient = client; // handy in the console, and for tests
  }

  async function start() {
    try {
      config = await loadArticle('history');
    } catch (error) {
      setState('offline', 'Comment service unreachable');
      els.formMessage.textContent = `Could not load comments: ${error.message}. Retrying…`;
      await waitBeforeRetry(backoffDelay(++attempt));
      return start();
    }
    attempt = 0;
    $('article-label').textContent = `Article ${article}`;
    connect();
    refreshReaders();
    setInterval(refreshReaders, READERS_POLL_MS);
    document.addEventListener('visibilitychange', () => { if (!document.hidden) refreshReaders(); });
  }

  start();
})();
