// The playground page: two Webex spaces (the employee's and the helpdesk's) and an article preview.
// Cards are drawn by the official Adaptive Cards renderer, served from the bot's npm cache at /vendor/.
"use strict";

(() => {
  const POLL_WAIT_SECONDS = 20;
  const RENDERER_RECHECK_MS = { fetching: 1000, other: 5000 };
  const CARD = "application/vnd.microsoft.card.adaptive";

  const $ = (id) => document.getElementById(id);
  const el = (tag, props = {}, ...children) => {
    const node = document.createElement(tag);
    Object.assign(node, props);
    for (const child of children) node.append(child);
    return node;
  };

  let config = null;
  let renderer = null; // {AdaptiveCards, hostConfig} once the scripts are loaded
  const spaces = {};

  // -- HTTP ----------------------------------------------------------------------------------------

  async function api(method, path, body) {
    const response = await fetch(path, {
      method,
      headers: body === undefined ? {} : { "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const data = await response.json().catch(() => ({}));
    if (!response.ok) {
      const detail = typeof data.error === "string" ? data.error : JSON.stringify(data.error ?? response.statusText);
      throw new Error(`${response.status}: ${detail}`);
    }
    return data;
  }

  const announce = (text) => {
    $("announcer").textContent = text;
  };

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  // -- The renderer --------------------------------------------------------------------------------

  function loadScript(src) {
    return new Promise((resolve, reject) => {
      const script = el("script", { src, async: false });
      script.addEventListener("load", resolve);
      script.addEventListener("error", () => reject(new Error(`could not load ${src}`)));
      document.head.append(script);
    });
  }

  function showRendererStatus(status) {
    const banner = $("renderer-status");
    banner.replaceChildren();
    banner.className = `banner ${status.status}`;
    if (status.status === "ready") {
      banner.hidden = true;
      const versions = Object.entries(status.packages || {})
        .map(([name, v]) => `${name} ${v.version} (${v.license} licence)`)
        .join(", ");
      $("renderer-versions").textContent = versions ? `Loaded: ${versions}.` : "";
      return;
    }
    banner.hidden = false;
    if (status.status === "fetching") {
      banner.append("Fetching the Adaptive Cards renderer with npm… Until it is ready, cards show as text.");
      return;
    }
    const what = status.status === "missing-npm"
      ? "npm is not installed, so the Adaptive Cards renderer could not be fetched."
      : "Fetching the Adaptive Cards renderer with npm failed.";
    banner.append(
      el("strong", { textContent: what }),
      " Cards show as text until it is there. Run this, then reload the page:",
      el("pre", {}, el("code", { textContent: status.command })),
      el("details", {}, el("summary", { textContent: "Details" }), el("p", { textContent: status.detail })),
    );
  }

  async function watchRenderer() {
    for (;;) {
      let status;
      try {
        status = await api("GET", "/local/renderer");
      } catch (err) {
        status = { status: "failed", detail: String(err), command: "" };
      }
      showRendererStatus(status);
      if (status.status === "ready") break;
      await sleep(status.status === "fetching" ? RENDERER_RECHECK_MS.fetching : RENDERER_RECHECK_MS.other);
    }
    try {
      document.head.append(el("link", { rel: "stylesheet", href: "/vendor/adaptivecards.css" }));
      await loadScript("/vendor/markdown-it.min.js");
      await loadScript("/vendor/adaptivecards.min.js");
    } catch (err) {
      showRendererStatus({ status: "failed", detail: String(err), command: "" });
      return;
    }
    const AC = window.AdaptiveCards;
    const md = window.markdownit({ html: false, linkify: false, breaks: false });
    AC.AdaptiveCard.onProcessMarkdown = (text, result) => {
      result.outputHtml = md.render(text);
      result.didProcess = true;
    };
    const hostConfig = new AC.HostConfig({
      fontFamily: "system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', sans-serif",
      supportsInteractivity: true,
      actions: { maxActions: 5, buttonSpacing: 8, actionsOrientation: "horizontal", showCard: { actionMode: "inline" } },
    });
    renderer = { AC, hostConfig };
    for (const space of Object.values(spaces)) space.redraw();
    if (preview.card) preview.draw();
  }

  // The card as a DOM element from the renderer, or null (no renderer yet, or a card it cannot read).
  function renderCard(card, onAction) {
    if (!renderer) return null;
    try {
      const adaptiveCard = new renderer.AC.AdaptiveCard();
      adaptiveCard.hostConfig = renderer.hostConfig;
      adaptiveCard.onExecuteAction = onAction;
      adaptiveCard.parse(card);
      const node = adaptiveCard.render();
      if (!node) return null;
      // Links in card text open beside the playground, like Webex opens them in a browser.
      for (const link of node.querySelectorAll("a[href]")) {
        link.target = "_blank";
        link.rel = "noopener noreferrer";
      }
      return node;
    } catch (err) {
      console.error("the card could not be rendered", err);
      return null;
    }
  }

  function openUrl(url) {
    if (/^(https?:|mailto:)/i.test(url)) window.open(url, "_blank", "noopener,noreferrer");
  }

  // Action.Submit's data after the renderer merged the card's input values into it (as Webex does).
  function submitInputs(action) {
    const data = action.data;
    return data && typeof data === "object" && !Array.isArray(data) ? data : {};
  }

  // -- A space: a log of messages kept current with long polls -------------------------------------

  class Space {
    constructor(name, room, email, log, onNew) {
      Object.assign(this, { name, room, email, log, onNew, cursor: 0, items: new Map() });
    }

    async poll() {
      let delay = 1000;
      for (;;) {
        try {
          const query = new URLSearchParams({ room: this.room, after: this.cursor, wait: POLL_WAIT_SECONDS });
          const page = await api("GET", `/local/messages?${query}`);
          for (const message of page.items) this.add(message);
          this.cursor = page.cursor;
          delay = 1000;
        } catch (err) {
          console.warn(`polling ${this.name} failed, retrying`, err);
          await sleep(delay);
          delay = Math.min(delay * 2, 15000);
        }
      }
    }

    add(message) {
      if (this.items.has(message.id)) return;
      const item = el("li", { className: "message" });
      item.dataset.messageId = message.id;
      this.items.set(message.id, { message, item });
      this.draw(message, item);
      this.log.append(item);
      item.scrollIntoView({ block: "nearest" });
      if (message.personId === config.bot.id) announce(`${config.bot.name} posted in the ${this.name} space.`);
      if (this.onNew) this.onNew(message);
    }

    redraw() {
      for (const { message, item } of this.items.values()) this.draw(message, item);
    }

    draw(message, item) {
      const fromBot = message.personId === config.bot.id;
      item.classList.toggle("from-bot", fromBot);
      item.classList.toggle("from-person", !fromBot);
      const time = message.created ? new Date(message.created).toLocaleTimeString() : "";
      const who = fromBot ? config.bot.name : message.personEmail;
      const head = el("p", { className: "meta" }, el("strong", { textContent: who }), ` · ${time}`);
      if (message.parentId) head.append(el("span", { className: "thread", textContent: " · reply in thread" }));
      const body = [head];
      const attachment = (message.attachments || []).find((a) => a.contentType === CARD);
      const card = attachment ? renderCard(attachment.content, (action) => this.act(message, action, item)) : null;
      const text = message.markdown || message.text || "";
      if (card) {
        body.push(el("div", { className: "card" }, card));
        body.push(el("details", { className: "fallback" },
          el("summary", { textContent: "Text version (what Webex shows without cards)" }),
          el("div", { className: "text", textContent: text })));
      } else {
        body.push(el("div", { className: "text", textContent: text }));
      }
      // Files the bot uploaded (the stats chart), shown inline as Webex shows images; only the bot's own.
      for (const url of message.files || []) {
        if (url.startsWith("/local/files/")) {
          body.push(el("img", { className: "upload", src: url, alt: text || "a file the bot sent", loading: "lazy" }));
        }
      }
      item.replaceChildren(...body);
    }

    async act(message, action, item) {
      const type = action.getJsonTypeName();
      if (type === "Action.OpenUrl") {
        openUrl(action.url);
      } else if (type === "Action.Submit") {
        const note = el("p", { className: "note", textContent: `You pressed “${action.title}”…` });
        note.setAttribute("role", "status");
        item.append(note);
        try {
          await api("POST", "/local/actions", { message_id: message.id, inputs: submitInputs(action), email: this.email });
          note.textContent = `You pressed “${action.title}”. Sent to the bot.`;
        } catch (err) {
          note.textContent = `“${action.title}” could not be sent: ${err.message}`;
          note.classList.add("error");
        }
      }
    }
  }

  // -- Tabs (WAI-ARIA tabs pattern: arrow keys move between tabs) ----------------------------------

  function setupTabs(onSelect) {
    const tabs = [...document.querySelectorAll('[role="tab"]')];
    const select = (tab, focus) => {
      for (const other of tabs) {
        const selected = other === tab;
        other.setAttribute("aria-selected", String(selected));
        other.tabIndex = selected ? 0 : -1;
        $(other.getAttribute("aria-controls")).hidden = !selected;
      }
      if (focus) tab.focus();
      onSelect(tab.id);
    };
    for (const tab of tabs) {
      tab.addEventListener("click", () => select(tab, false));
      tab.addEventListener("keydown", (event) => {
        const i = tabs.indexOf(tab);
        const next = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: tabs.length - 1 }[event.key];
        if (next === undefined) return;
        event.preventDefault();
        select(tabs[(next + tabs.length) % tabs.length], true);
      });
    }
  }

  // -- The article preview -------------------------------------------------------------------------

  const preview = {
    card: null,
    loaded: false,
    async load() {
      if (this.loaded) return;
      this.loaded = true;
      const select = $("article");
      try {
        const { items } = await api("GET", "/local/articles");
        const groups = new Map();
        for (const article of items) {
          if (!groups.has(article.kind)) groups.set(article.kind, el("optgroup", { label: article.kind }));
          const label = article.code ? `${article.code} — ${article.title}` : article.title;
          groups.get(article.kind).append(el("option", { value: article.id, textContent: `${label} [${article.id}]` }));
        }
        select.append(...groups.values());
      } catch (err) {
        this.loaded = false;
        $("preview-note").textContent = `Could not list the articles: ${err.message}`;
      }
    },
    async show(id) {
      $("preview").replaceChildren();
      this.card = null;
      if (!id) return;
      try {
        this.card = await api("GET", `/local/articles/${encodeURIComponent(id)}/card`);
        this.draw();
      } catch (err) {
        $("preview-note").textContent = `Could not build the card: ${err.message}`;
      }
    },
    draw() {
      const note = $("preview-note");
      note.textContent = "";
      const onAction = (action) => {
        if (action.getJsonTypeName() === "Action.OpenUrl") openUrl(action.url);
        else note.textContent = `“${action.title}” does nothing in a preview; ask the bot in the Employee tab to try it.`;
      };
      const card = this.card.card ? renderCard(this.card.card, onAction) : null;
      const text = el("div", { className: "text", textContent: this.card.markdown });
      if (card) {
        $("preview").replaceChildren(el("div", { className: "card" }, card),
          el("details", { className: "fallback" }, el("summary", { textContent: "Text version" }), text));
      } else {
        $("preview").replaceChildren(text);
      }
    },
  };

  // -- Start ---------------------------------------------------------------------------------------

  async function start() {
    config = await api("GET", "/local/config");
    for (const node of document.querySelectorAll('[data-bind="employee-email"]')) node.textContent = config.employee.email;
    for (const node of document.querySelectorAll('[data-bind="agent-email"]')) node.textContent = config.helpdesk.email;

    let helpdeskVisible = false;
    let unread = 0;
    const badge = $("helpdesk-unread");
    const showUnread = () => {
      badge.hidden = unread === 0;
      badge.textContent = unread ? `${unread} new` : "";
    };
    spaces.employee = new Space("employee", config.employee.room, config.employee.email, $("log-employee"));
    spaces.helpdesk = new Space("helpdesk", config.helpdesk.room, config.helpdesk.email, $("log-helpdesk"), () => {
      $("helpdesk-empty").hidden = true;
      if (!helpdeskVisible) unread += 1;
      showUnread();
    });

    setupTabs((id) => {
      helpdeskVisible = id === "tab-helpdesk";
      if (helpdeskVisible) unread = 0;
      showUnread();
      if (id === "tab-articles") preview.load();
      if (id === "tab-employee") $("message").focus();
    });
    $("article").addEventListener("change", (event) => preview.show(event.target.value));

    $("composer").addEventListener("submit", async (event) => {
      event.preventDefault();
      const input = $("message");
      const text = input.value.trim();
      if (!text) return;
      $("composer-error").textContent = "";
      try {
        await api("POST", "/local/messages", { text, email: config.employee.email });
        input.value = "";
      } catch (err) {
        $("composer-error").textContent = `Not sent: ${err.message}`;
      }
      input.focus();
    });

    watchRenderer();
    spaces.employee.poll();
    spaces.helpdesk.poll();
    $("message").focus();
  }

  start().catch((err) => {
    $("composer-error").textContent = `The playground could not start: ${err.message}`;
  });
})();
