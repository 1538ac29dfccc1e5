// A small, safe Markdown renderer for untrusted text (model output, prompts, titles).
//
// It never parses HTML: it reads the text line by line and builds DOM nodes whose text is
// set with `textContent` (document.createTextNode), so `<script>`, `<img onerror=…>` and
// every other tag in the input is shown as the characters it is. Links become <a> only
// for http:, https: and mailto: URLs; anything else (javascript:, data:, vbscript:,
// relative paths) stays plain text. The subset: ATX headings, paragraphs, unordered and
// ordered lists (flat), block quotes, fenced code, rules, and inline `code`, **strong**,
// *emphasis* / _emphasis_ and [links](https://…).

const SAFE_PROTOCOLS = new Set(["http:", "https:", "mailto:"]);
// One inline token: code, strong, emphasis or a link (the first that matches, leftmost).
const INLINE = /(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)|\*\*(\S(?:[\s\S]*?\S)?)\*\*|__(\S(?:[\s\S]*?\S)?)__|\*(\S(?:[\s\S]*?\S)?)\*|\b_(\S(?:[\s\S]*?\S)?)_\b|\[([^\]\n]{1,500})\]\(([^()\s]{1,2000})\)/;
const MAX_DEPTH = 8;

export function safeUrl(text) {
  let url;
  try {
    url = new URL(text);
  } catch {
    return null; // relative or malformed: not a link
  }
  return SAFE_PROTOCOLS.has(url.protocol) ? url.href : null;
}

function inline(parent, text, depth = 0) {
  if (depth > MAX_DEPTH) {
    parent.append(document.createTextNode(text));
    return;
  }
  let rest = text;
  while (rest) {
    const m = INLINE.exec(rest);
    if (!m) {
      parent.append(document.createTextNode(rest));
      return;
    }
    if (m.index > 0) parent.append(document.createTextNode(rest.slice(0, m.index)));
    if (m[1] !== undefined) {
      const code = document.createElement("code");
      code.textContent = m[2];
      parent.append(code);
    } else if (m[3] !== undefined || m[4] !== undefined) {
      const strong = document.createElement("strong");
      inline(strong, m[3] ?? m[4], depth + 1);
      parent.append(strong);
    } else if (m[5] !== undefined || m[6] !== undefined) {
      const em = document.createElement("em");
      inline(em, m[5] ?? m[6], depth + 1);
      parent.append(em);
    } else {
      const href = safeUrl(m[8]);
      if (href) {
        const a = document.createElement("a");
        a.href = href;
        a.rel = "noopener noreferrer nofollow";
        inline(a, m[7], depth + 1);
        parent.append(a);
      } else {
        parent.append(document.createTextNode(m[0]));
      }
    }
    rest = rest.slice(m.index + m[0].length);
  }
}

function element(tag, text) {
  const node = document.createElement(tag);
  if (text !== undefined) inline(node, text);
  return node;
}

// Render `text` into `container` (its children are replaced). Headings start at
// `headingLevel` (a model's "#" becomes an <h3> inside a page that has h1 and h2).
export function renderMarkdown(container, text, { headingLevel = 3 } = {}) {
  const out = document.createDocumentFragment();
  const lines = String(text ?? "").replace(/\r\n?/g, "\n").split("\n");
  let paragraph = [];
  let list = null;
  let quote = null;

  const flush = () => {
    if (paragraph.length) {
      out.append(element("p", paragraph.join(" ")));
      paragraph = [];
    }
    list = null;
    if (quote) {
      out.append(quote);
      quote = null;
    }
  };

  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    const fence = /^\s*(```+|~~~+)(.*)$/.exec(line);
    if (fence) {
      flush();
      const body = [];
      i++;
      while (i < lines.length && !lines[i].trim().startsWith(fence[1])) body.push(lines[i++]);
      const pre = document.createElement("pre");
      const code = document.createElement("code");
      code.textContent = body.join("\n");
      pre.append(code);
      out.append(pre);
      continue;
    }
    if (!line.trim()) {
      flush();
      continue;
    }
    const heading = /^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$/.exec(line);
    if (heading) {
      flush();
      const level = Math.min(6, headingLevel + heading[1].length - 1);
      out.append(element(`h${level}`, heading[2]));
      continue;
    }
    if (/^\s{0,3}([-*_])(\s*\1){2,}\s*$/.test(line)) {
      flush();
      out.append(document.createElement("hr"));
      continue;
    }
    const quoted = /^\s{0,3}>\s?(.*)$/.exec(line);
    if (quoted) {
      if (paragraph.length || list) flush();
      quote = quote || document.createElement("blockquote");
      quote.append(element("p", quoted[1]));
      continue;
    }
    const bullet = /^\s*[-*+]\s+(.*)$/.exec(line);
    const numbered = /^\s*\d{1,9}[.)]\s+(.*)$/.exec(line);
    if (bullet || numbered) {
      const tag = bullet ? "UL" : "OL";
      if (paragraph.length || quote || (list && list.tagName !== tag)) flush();
      if (!list) {
        list = document.createElement(tag);
        out.append(list);
      }
      list.append(element("li", (bullet || numbered)[1]));
      continue;
    }
    if (list && /^\s{2,}\S/.test(line) && list.lastChild) {
      // a continuation of the last item
      list.lastChild.append(document.createTextNode(" "));
      inline(list.lastChild, line.trim());
      continue;
    }
    if (list || quote) flush();
    paragraph.push(line.trim());
  }
  flush();
  container.replaceChildren(out);
}
