/** Browse: projects → cohorts and frozen dataset versions → subjects (clinical variables) → studies → series. */
import { api, type Cohort, type Dataset, type SeriesRecord } from '../api';
import { fmt, h, replace, type Child } from '../dom';
import { can, go, href } from '../state';
import { errorBox, simulatedBadge, table } from '../ui';

export async function projectsPage(main: HTMLElement): Promise<void> {
  const projects = await api.projects();
  replace(main, h('h1', null, 'Projects'),
    projects.length === 0 ? h('p', { class: 'muted' }, 'You have no role in any project yet: ask a data manager.') : null,
    h('div', { class: 'cards' }, projects.map((p) => h('a', { class: 'card project', href: href(['p', p.name]) },
      h('h2', null, p.name),
      h('p', null, p.description ?? ''),
      h('p', { class: 'muted' }, `role: ${p.role ?? '—'} · cohorts: ${p.cohorts.join(', ') || '—'}`),
      (p.datasets ?? []).some((d) => d.simulated) ? simulatedBadge(true) : null))));
}

function seriesLabel(r: SeriesRecord): string {
  return [r.modality, r.series_description || r.protocol, r.shape ? r.shape.join('×') : null].filter(Boolean).join(' · ');
}

export function seriesCard(project: string, r: SeriesRecord, dataset?: string): HTMLElement {
  const ok = (r.status ?? 'ok') === 'ok' && r.in_catalog !== false;
  return h('a', { class: `card series ${ok ? '' : 'disabled'}`, href: ok ? href(['p', project, 'series', r.key], { dataset }) : undefined, dataset: { key: r.key } },
    ok ? h('img', { class: 'thumb', src: api.thumbnailUrl(project, r.key), alt: '', loading: 'lazy', width: 120, height: 120 }) : h('div', { class: 'thumb' }),
    h('div', { class: 'series-text' },
      h('strong', null, seriesLabel(r) || r.key), simulatedBadge(r.simulated),
      h('div', { class: 'muted small' }, `subject ${r.subject_id ?? '—'} · ${r.study_date ?? ''}`),
      r.problem ? h('div', { class: 'error small' }, r.problem) : null));
}

export async function projectPage(main: HTMLElement, project: string, params: URLSearchParams): Promise<void> {
  const [info, cohorts, fields] = await Promise.all([api.project(project), api.cohorts(project), api.fields(project).catch(() => [])]);
  const cohort = params.get('cohort') ?? undefined;
  const dataset = params.get('dataset') ?? undefined;
  const where = params.get('where') ?? '';
  const tab = params.get('tab') ?? 'subjects';
  const nav = (p: Record<string, string | undefined>) => go(['p', project], { cohort, dataset, where: where || undefined, tab, ...p });

  const search = h('input', { class: 'where', name: 'where', value: where, placeholder: 'filter, e.g. modality == "CT" and 40 <= age < 60', list: 'fields', spellcheck: false });
  const results = h('div', { class: 'results' }, h('p', { class: 'muted' }, 'Loading…'));
  const scope = dataset ? `dataset ${dataset}` : cohort ? `cohort ${cohort}` : 'all the project';

  const cohortList = h('div', { class: 'cohorts' }, cohorts.map((c: Cohort) => h('div', { class: `cohort ${c.name === cohort && !dataset ? 'active' : ''}` },
    h('a', { href: href(['p', project], { cohort: c.name, tab }) }, h('strong', null, c.name)),
    h('code', { class: 'small' }, c.where),
    h('span', { class: 'muted small' }, `${fmt(c.n_series)} series · ${fmt(c.n_subjects)} subjects`),
    h('div', { class: 'versions' }, (c.versions ?? []).map((d: Dataset) => h('a', {
      class: `version ${d.ref === dataset ? 'active' : ''}`, href: href(['p', project], { dataset: d.ref, tab }), title: d.content_hash ?? '',
    }, d.ref, ' ', simulatedBadge(d.simulated)))))));

  replace(main,
    h('div', { class: 'project-head' },
      h('h1', null, info.name), simulatedBadge((info.datasets ?? []).some((d) => d.simulated)),
      h('p', null, info.description ?? ''),
      h('p', { class: 'muted' }, `your role: ${info.role ?? '—'}`),
      can(project, 'annotation.review') ? h('a', { class: 'button', href: href(['p', project, 'review']) }, 'Review queue') : null),
    h('section', { class: 'cols' },
      h('aside', null, h('h2', null, 'Cohorts and frozen versions'),
        h('a', { href: href(['p', project], { tab }), class: !cohort && !dataset ? 'active' : '' }, 'All series of the project'), cohortList),
      h('div', { class: 'browse' },
        h('form', {
          class: 'search', onsubmit: (ev: Event) => { ev.preventDefault(); nav({ where: search.value.trim() || undefined }); },
        }, search, h('button', { type: 'submit', class: 'primary' }, 'Search'),
        h('datalist', { id: 'fields' }, fields.map((f) => h('option', { value: f.name }, `${f.name} (${f.kind})`)))),
        h('details', { class: 'fields small' }, h('summary', null, 'Fields you can filter on'),
          table(['name', 'kind', 'meaning'], fields.map((f) => [h('code', null, f.name), f.kind + (f.unit ? ` [${f.unit}]` : ''), f.description ?? '']))),
        h('div', { class: 'tabs' },
          h('a', { class: tab === 'subjects' ? 'active' : '', href: href(['p', project], { cohort, dataset, where: where || undefined, tab: 'subjects' }) }, 'Subjects'),
          h('a', { class: tab === 'series' ? 'active' : '', href: href(['p', project], { cohort, dataset, where: where || undefined, tab: 'series' }) }, 'Series'),
          h('span', { class: 'muted small' }, ` in ${scope}${where ? ' matching the filter' : ''}`)),
        results)));

  try {
    if (tab === 'series') {
      const page = await api.series(project, { cohort, dataset, where: where || undefined, limit: 200 });
      replace(results, h('p', { class: 'muted small' }, `${page.total} series${page.total > page.items.length ? ` (first ${page.items.length})` : ''}`),
        h('div', { class: 'series-grid' }, page.items.map((r) => seriesCard(project, r, dataset))));
    } else {
      const page = await api.subjects(project, { cohort, dataset, where: where || undefined, limit: 500 });
      const vars = Object.keys(page.variables ?? {});
      const rows: Child[][] = page.items.map((s) => [
        h('a', { href: href(['p', project, 'subject', s.subject_id], { dataset }) }, s.subject_id), simulatedBadge(s.simulated),
        s.sex ?? '—', s.site ?? '—', fmt(s.n_studies), fmt(s.n_series), (s.modalities ?? []).join(', '),
        ...vars.map((v) => fmt(s.variables?.[v], 2))]);
      replace(results, h('p', { class: 'muted small' }, `${page.total} subjects`),
        table(['subject', '', 'sex', 'site', 'studies', 'series', 'modalities', ...vars.map((v) => v + (page.variables?.[v]?.unit ? ` [${page.variables[v].unit}]` : ''))], rows, { class: 'grid subjects' }));
    }
  } catch (err) {
    replace(results, errorBox(err));
  }
}

export async function subjectPage(main: HTMLElement, project: string, subjectId: string, params: URLSearchParams): Promise<void> {
  const dataset = params.get('dataset') ?? undefined;
  const s = await api.subject(project, subjectId, dataset);
  const vars = Object.entries(s.variables ?? {});
  replace(main,
    h('h1', null, `Subject ${s.subject_id} `, simulatedBadge(s.simulated)),
    h('p', { class: 'muted' }, [s.sex ? `sex ${s.sex}` : '', s.site ? `site ${s.site}` : '', dataset ? `dataset ${dataset}` : ''].filter(Boolean).join(' · ')),
    vars.length ? h('section', null, h('h2', null, 'Clinical variables'), table(['variable', 'value'], vars.map(([k, v]) => [k, fmt(v, 3)]), { class: 'grid variables' })) : null,
    h('h2', null, 'Studies'),
    s.studies.map((st) => h('section', { class: 'study' },
      h('h3', null, `Study ${st.study_date ?? ''} `, h('span', { class: 'muted small' }, st.study_uid), st.age !== undefined && st.age !== null ? h('span', { class: 'muted small' }, ` · age ${fmt(st.age)}`) : null),
      h('div', { class: 'series-grid' }, st.series.map((r) => seriesCard(project, r, dataset))))));
}
