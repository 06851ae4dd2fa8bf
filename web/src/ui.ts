/** Small shared pieces of UI: error boxes, badges, status chips, tables, modal dialogs. */
import { ApiError } from './api';
import { h, type Child } from './dom';

export function errorText(err: unknown): string {
  return err instanceof ApiError ? err.describe() : String((err as Error)?.message ?? err);
}

export function errorBox(err: unknown): HTMLElement {
  return h('div', { class: 'error', role: 'alert' }, errorText(err));
}

export function simulatedBadge(simulated: unknown): HTMLElement | null {
  return simulated ? h('span', { class: 'badge simulated', title: 'Synthetic data: not from a patient' }, 'SIMULATED') : null;
}

export function statusChip(status: string): HTMLElement {
  return h('span', { class: `chip status-${status.replace(/[^a-z]/g, '')}` }, status);
}

export function table(headers: string[], rows: Child[][], attrs: Record<string, unknown> = {}): HTMLTableElement {
  return h('table', { class: 'grid', ...attrs },
    h('thead', null, h('tr', null, headers.map((x) => h('th', null, x)))),
    h('tbody', null, rows.map((r) => h('tr', null, r.map((c) => h('td', null, c))))));
}

/** A modal dialog with buttons; resolves with the chosen button's value (or null when dismissed). */
export function choose<T extends string>(title: string, body: Child, buttons: { label: string; value: T; primary?: boolean }[]): Promise<T | null> {
  return new Promise((resolve) => {
    const dlg = h('dialog', { class: 'modal' },
      h('h2', null, title),
      h('div', { class: 'modal-body' }, body),
      h('div', { class: 'modal-buttons' }, buttons.map((b) => h('button', {
        class: b.primary ? 'primary' : '', dataset: { value: b.value },
        onclick: () => { dlg.close(); dlg.remove(); resolve(b.value); },
      }, b.label)), h('button', { onclick: () => { dlg.close(); dlg.remove(); resolve(null); } }, 'Cancel')));
    document.body.appendChild(dlg);
    dlg.showModal();
  });
}

export function toast(text: string, kind: 'ok' | 'error' = 'ok'): void {
  const t = h('div', { class: `toast ${kind}`, role: 'status' }, text);
  document.body.appendChild(t);
  setTimeout(() => t.remove(), kind === 'error' ? 8000 : 3000);
}
