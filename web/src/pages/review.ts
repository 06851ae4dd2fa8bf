/** A project's review area: submitted annotation versions waiting for a reviewer, and the inference service's AI results. */
import { api, type ServiceResult, type ServiceResultDetail } from '../api';
import { h, replace } from '../dom';
import { href } from '../state';
import { errorText, statusChip, table, toast } from '../ui';

export async function reviewPage(main: HTMLElement, project: string): Promise<void> {
  const [queue, results] = await Promise.all([api.queue(project), api.serviceResults(project, 'pending')]);
  replace(main, h('h1', null, `Review queue — ${project}`),
    queue.length === 0 ? h('p', { class: 'muted' }, 'Nothing waits for review.') :
      table(['annotation', 'kind', 'version', 'branch', 'author', 'status', 'saved', 'series', ''], queue.map((v) => [
        v.name, v.kind, `v${v.number}`, v.branch, v.author, statusChip(v.status), v.created_at, h('code', { class: 'small' }, v.series_key ?? v.series_uid),
        h('a', { class: 'button', href: href(['p', project, 'series', v.series_key ?? (v.series_label ? `${v.series_uid}#${v.series_label}` : v.series_uid)], { version: v.id }) }, 'Open and review'),
      ]), { class: 'grid queue' }),
    aiResults(project, results));
}

/** The service's results pending review: series, model, time, findings; accept, or reject with a reason. */
function aiResults(project: string, results: ServiceResult[]): HTMLElement {
  const section = h('section', { class: 'ai-results' }, h('h2', null, 'AI results'));
  if (results.length === 0) {
    section.appendChild(h('p', { class: 'muted' }, 'No AI result waits for review.'));
    return section;
  }
  section.appendChild(table(['result', 'app', 'model', 'series', 'proposed', 'findings', 'decision'], results.map((r) => {
    const model = h('span', { class: 'muted small' }, '…');
    const outcome = h('div', { class: 'outcome' });
    const reason = h('input', { name: `reason-${r.job}`, placeholder: 'Reason (needed to reject)', maxlength: 2000 });
    const comment = h('input', { name: `comment-${r.job}`, placeholder: 'Comment (optional)', maxlength: 2000 });
    const buttons: HTMLButtonElement[] = [];
    const decide = async (decision: 'accept' | 'reject') => {
      if (decision === 'reject' && !reason.value.trim()) {
        replace(outcome, h('span', { class: 'error small' }, 'Say why you reject it (reason).'));
        reason.focus();
        return;
      }
      buttons.forEach((b) => { b.disabled = true; });
      try {
        const out = decision === 'accept' ? await api.acceptResult(project, r.job, comment.value.trim())
          : await api.rejectResult(project, r.job, reason.value.trim());
        replace(outcome, statusChip(out.review), ` by ${out.reviewer ?? '—'} at ${out.reviewed_at ?? '—'}`,
          out.comment ? ` — ${out.comment}` : '');
        reason.remove(); comment.remove(); buttons.forEach((b) => b.remove());
        toast(`Result ${r.job} ${out.review}`);
      } catch (err) {
        buttons.forEach((b) => { b.disabled = false; });
        replace(outcome, h('span', { class: 'error small', role: 'alert' }, errorText(err)));
      }
    };
    buttons.push(h('button', { class: 'primary', dataset: { action: 'accept' }, onclick: () => decide('accept') }, 'Accept'),
      h('button', { dataset: { action: 'reject' }, onclick: () => decide('reject') }, 'Reject'));
    api.serviceResult(project, r.job).then((d: ServiceResultDetail) => {
      const m = (d.model ?? [])[0];
      replace(model, m ? `${m.name ?? '—'} ${m.version ?? ''}` : '—');
      if (m?.sha256) model.title = `sha256 ${m.sha256}`;
    }).catch((err) => replace(model, h('span', { class: 'error small' }, errorText(err))));
    return [
      h('span', null, `#${r.job}`, r.held ? h('span', { class: 'chip', title: 'Nothing is sent before acceptance' }, 'held') : null),
      r.app, model, h('code', { class: 'small' }, r.series), r.proposed_at ?? '—',
      r.findings.length ? h('ul', { class: 'findings' }, r.findings.map((f) => h('li', null, f))) : h('span', { class: 'muted' }, 'none'),
      h('div', { class: 'decide', dataset: { job: String(r.job) } }, comment, reason, buttons, outcome),
    ];
  }), { class: 'grid ai-results' }));
  return section;
}
