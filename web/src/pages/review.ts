/** A project's review queue: submitted versions waiting for a reviewer. */
import { api } from '../api';
import { h, replace } from '../dom';
import { href } from '../state';
import { statusChip, table } from '../ui';

export async function reviewPage(main: HTMLElement, project: string): Promise<void> {
  const queue = await api.queue(project);
  replace(main, h('h1', null, `Review queue — ${project}`),
    queue.length === 0 ? h('p', { class: 'muted' }, 'Nothing waits for review.') :
      table(['annotation', 'kind', 'version', 'branch', 'author', 'status', 'saved', 'series', ''], queue.map((v) => [
        v.name, v.kind, `v${v.number}`, v.branch, v.author, statusChip(v.status), v.created_at, h('code', { class: 'small' }, v.series_key ?? v.series_uid),
        h('a', { class: 'button', href: href(['p', project, 'series', v.series_key ?? (v.series_label ? `${v.series_uid}#${v.series_label}` : v.series_uid)], { version: v.id }) }, 'Open and review'),
      ]), { class: 'grid queue' }));
}
