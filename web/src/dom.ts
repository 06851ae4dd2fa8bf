/**
 * The one way this front end builds DOM: elements, attributes and *text nodes*.
 *
 * Data from the server (label names, free text, patient-derived strings, error messages) only ever
 * reaches the page as `Text` nodes or attribute values set through the DOM API, never as HTML:
 * there is no `innerHTML` anywhere in `src/` (tests/web checks the built bundle's own code paths
 * by rendering hostile names).
 */

export type Child = Node | string | number | null | undefined | false | Child[];
type Attrs = Record<string, unknown> & {
  class?: string;
  style?: Partial<CSSStyleDeclaration> | string;
  dataset?: Record<string, string>;
};

export function h<K extends keyof HTMLElementTagNameMap>(tag: K, attrs?: Attrs | null, ...children: Child[]): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  if (attrs) {
    for (const [key, value] of Object.entries(attrs)) {
      if (value === undefined || value === null || value === false) continue;
      if (key === 'class') el.className = String(value);
      else if (key === 'style') {
        if (typeof value === 'string') el.setAttribute('style', value);
        else Object.assign(el.style, value);
      } else if (key === 'dataset') Object.assign(el.dataset, value as Record<string, string>);
      else if (key.startsWith('on') && typeof value === 'function') {
        el.addEventListener(key.slice(2).toLowerCase(), value as EventListener);
      } else if (key in el && typeof value !== 'string') {
        (el as unknown as Record<string, unknown>)[key] = value;
      } else {
        el.setAttribute(key, value === true ? '' : String(value));
      }
    }
  }
  append(el, children);
  return el;
}

export function append(parent: Node, children: Child | Child[]): void {
  const list = Array.isArray(children) ? children : [children];
  for (const c of list) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(parent, c);
    else if (c instanceof Node) parent.appendChild(c);
    else parent.appendChild(document.createTextNode(String(c)));
  }
}

export function clear(el: Element): Element {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

export function replace(el: Element, ...children: Child[]): void {
  clear(el);
  append(el, children);
}

/** A CSS colour from an [r, g, b] triple of numbers 0..255 (validated: never a string from data). */
export function rgb(c: readonly number[] | undefined): string {
  const [r, g, b] = (c ?? [255, 0, 0]).map((x) => Math.max(0, Math.min(255, Math.round(Number(x) || 0))));
  return `rgb(${r}, ${g}, ${b})`;
}

export function fmt(x: unknown, digits = 1): string {
  if (x === null || x === undefined || x === '') return '—';
  if (typeof x === 'number') return Number.isInteger(x) ? String(x) : x.toFixed(digits);
  if (Array.isArray(x)) return x.map((v) => fmt(v, digits)).join(', ');
  return String(x);
}

export function download(blob: Blob, filename: string): void {
  const a = h('a', { href: URL.createObjectURL(blob), download: filename });
  document.body.appendChild(a);
  a.click();
  setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
}
