/**
 * The workstation API (served by `sobre serve`; reference: docs/workstation.md and /api/openapi.json).
 *
 * Every route the front end uses is named here and nowhere else. Errors come back as the API's one
 * JSON shape `{error, status, what, expected, found, fix}` and are thrown as {@link ApiError}.
 */

export interface ErrorBody {
  error: string;
  status: number;
  what: string;
  expected?: string | null;
  found?: string | null;
  fix?: string | null;
  [key: string]: unknown;
}

export class ApiError extends Error {
  constructor(public status: number, public body: ErrorBody) {
    super(body.what || `HTTP ${status}`);
  }
  /** One line a person can act on: what, expected, found, fix. */
  describe(): string {
    const b = this.body;
    return [b.what, b.expected ? `expected: ${b.expected}` : '', b.found ? `found: ${b.found}` : '', b.fix ? `fix: ${b.fix}` : '']
      .filter(Boolean).join(' — ');
  }
}

let csrf = '';
export function setCsrf(token: string): void { csrf = token || ''; }
let onUnauthenticated: (() => void) | null = null;
export function onLoggedOut(fn: () => void): void { onUnauthenticated = fn; }

export const enc = encodeURIComponent;

async function errorOf(res: Response): Promise<ApiError> {
  let body: ErrorBody;
  try {
    body = await res.json();
    if (typeof body !== 'object' || body === null || !('what' in body)) throw new Error('not an API error');
  } catch {
    body = { error: res.statusText || 'Error', status: res.status, what: `${res.status} ${res.statusText}`.trim() };
  }
  return new ApiError(res.status, body);
}

export async function request(method: string, path: string, body?: unknown, init: RequestInit = {}): Promise<Response> {
  const { headers: extra, ...rest } = init;
  const headers = new Headers(extra);
  if (method !== 'GET' && method !== 'HEAD' && csrf) headers.set('X-CSRF-Token', csrf);
  let payload: BodyInit | undefined;
  if (body instanceof ArrayBuffer || ArrayBuffer.isView(body) || body instanceof Blob || body instanceof FormData) {
    payload = body as BodyInit;
  } else if (body !== undefined) {
    headers.set('Content-Type', 'application/json');
    payload = JSON.stringify(body);
  }
  const res = await fetch(path, { ...rest, method, headers, body: payload, credentials: 'same-origin' });
  if (!res.ok) {
    const err = await errorOf(res);
    if (res.status === 401 && onUnauthenticated && !path.endsWith('/login')) onUnauthenticated();
    throw err;
  }
  return res;
}

export async function json<T = any>(method: string, path: string, body?: unknown): Promise<T> {
  const res = await request(method, path, body);
  if (res.status === 204) return undefined as T;
  return res.json() as Promise<T>;
}
const get = <T = any>(path: string) => json<T>('GET', path);

// ------------------------------------------------------------------------------------------ types
export interface Account { username: string; display_name: string; admin: boolean; disabled: boolean; must_change_password: boolean; roles: Record<string, string> }
export interface Session { user: Account; csrf_token: string; idle_timeout_s: number; max_session_s: number; projects: Record<string, string[]>; admin_actions: string[] }
export interface Code { value: string; scheme: string; meaning: string }
export interface SegmentDef { name: string; value: number; color: [number, number, number]; category?: Code | null; type?: Code | null }
export interface LabelDef { name: string; kind: 'binary' | 'multiclass' | 'multilabel' | 'numeric' | 'text'; classes?: string[] | null; unit?: string | null; minimum?: number | null; maximum?: number | null }
export interface LabelSchema { segments: SegmentDef[]; labels: LabelDef[]; points: string[]; boxes: string[] }
export interface Dataset { ref: string; name: string; version: number; content_hash?: string; n_series?: number; n_files?: number; n_subjects?: number; created_at?: string; simulated?: boolean; where?: string; variables?: unknown }
export interface Project { name: string; description?: string | null; cohorts: string[]; schema: LabelSchema; created_at?: string; role?: string | null; actions?: string[]; datasets?: Dataset[] }
export interface Cohort { name: string; where: string; created_at?: string; n_series?: number; n_subjects?: number; left_out?: unknown; versions?: Dataset[] }
export interface Field { name: string; kind: string; unit?: string | null; description?: string }
export interface Page<T> { total: number; offset: number; limit: number; items: T[]; left_out?: unknown }
export type SeriesRecord = Record<string, any> & {
  key: string; series_uid: string; label?: string; subject_id?: string; study_uid?: string; study_date?: string;
  modality?: string; series_description?: string; simulated?: boolean; status?: string; problem?: string | null;
  shape?: number[]; spacing?: number[]; in_catalog?: boolean;
};
export interface SubjectRow { subject_id: string; sex?: string; site?: string; simulated?: boolean; n_series?: number; n_studies?: number; modalities?: string[]; variables?: Record<string, unknown> }
export interface Subject extends SubjectRow { studies: { study_uid: string; study_date?: string; age?: number; series: SeriesRecord[] }[] }
export interface Geometry {
  dtype: 'uint8' | 'int16' | 'uint16' | 'float32'; byte_order: 'little'; layout: 'i-fastest';
  dimensions: [number, number, number]; components: number; spacing: [number, number, number];
  origin: [number, number, number]; direction: number[]; n_bytes: number; is_2d: boolean;
  window: { center: number; width: number } | null; orientation?: string; extra_axes?: Record<string, number>;
}
export interface Review { reviewer: string; decision: 'accept' | 'reject'; comment: string | null; created_at: string }
export interface Version {
  id: number; annotation_id: number; project: string; series_uid: string; series_label: string; series_key?: string; name: string;
  kind: 'mask' | 'points' | 'boxes' | 'labels'; number: number; parent: number | null; branch: string; author: string;
  tool: string | null; status: 'draft' | 'submitted' | 'accepted' | 'rejected'; sha256: string; summary: Record<string, any>;
  comment: string | null; created_at: string; reviews: Review[];
  /** Set when the version is reviewed elsewhere (an AI result of the inference service: owner, job, how). */
  reviewed_in?: { owner: string; job?: number; how?: string } | null;
}
export interface SeriesDetail extends SeriesRecord { variables: Record<string, unknown>; volume: Geometry; annotations: Version[] }
/** A result of the inference service awaiting (or past) review: `sobre review list --json`. */
export interface ServiceResult {
  job: number; review: 'pending' | 'accepted' | 'corrected' | 'rejected'; app: string; project: string; study: string; series: string;
  proposed_at: string | null; findings: string[]; seg: string | null; held: boolean | null; reviewer: string | null; reviewed_at: string | null;
}
/** One result in full: `sobre review show --json` (without server paths). */
export interface ServiceResultDetail extends ServiceResult {
  state: string; error: string | null; model: { name?: string; version?: string; sha256?: string }[] | null;
  input: Record<string, any> | null; outputs: Record<string, any>[] | null; measurements: unknown; annotation_version: number | null;
  comment: string | null; deliveries: { destination: string; kind: string; state: string; sent_at: string | null }[];
}
export interface SaveOptions { parent: number | null; new_branch?: boolean; tool?: string; status?: 'draft' | 'submitted'; comment?: string }

function items<T>(x: Page<T> | T[]): T[] { return Array.isArray(x) ? x : x.items; }
function query(params: Record<string, string | number | boolean | null | undefined>): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
  const s = q.toString();
  return s ? `?${s}` : '';
}

// ------------------------------------------------------------------------------------------ routes
const P = (p: string) => `/api/projects/${enc(p)}`;
const S = (p: string, key: string) => `${P(p)}/series/${enc(key)}`;

export const api = {
  login: (username: string, password: string) => json<Session>('POST', '/api/auth/login', { username, password }),
  logout: () => json('POST', '/api/auth/logout'),
  session: () => get<Session>('/api/auth/session'),

  projects: () => get<Project[]>('/api/projects'),
  project: (p: string) => get<Project>(P(p)),
  fields: (p: string) => get<Field[]>(`${P(p)}/fields`),
  cohorts: (p: string) => get<Cohort[]>(`${P(p)}/cohorts`),
  datasets: (p: string) => get<Dataset[]>(`${P(p)}/datasets`),
  /** Series of a project, a cohort or a frozen dataset version, filtered with the catalog's filter language. */
  series: (p: string, o: { cohort?: string; dataset?: string; where?: string; offset?: number; limit?: number } = {}) =>
    get<Page<SeriesRecord>>(`${P(p)}/series${query(o)}`),
  subjects: (p: string, o: { cohort?: string; dataset?: string; where?: string; offset?: number; limit?: number } = {}) =>
    get<Page<SubjectRow> & { variables?: Record<string, { kind: string; unit?: string }> }>(`${P(p)}/subjects${query(o)}`),
  subject: (p: string, id: string, dataset?: string) => get<Subject>(`${P(p)}/subjects/${enc(id)}${query({ dataset })}`),

  seriesDetail: (p: string, key: string) => get<SeriesDetail>(S(p, key)),
  volumeUrl: (p: string, key: string, t = 0) => `${S(p, key)}/volume${query({ t: t || undefined })}`,
  sliceUrl: (p: string, key: string, index: number, o: { axis?: string; format?: 'raw' | 'png'; window?: string; t?: number } = {}) =>
    `${S(p, key)}/slices/${index}${query(o)}`,
  thumbnailUrl: (p: string, key: string) => `${S(p, key)}/thumbnail.png`,

  versions: async (p: string, f: { series?: string; name?: string; status?: string; author?: string } = {}) =>
    items(await get<Page<Version> | Version[]>(`${P(p)}/annotations${query(f)}`)),
  seriesAnnotations: (p: string, key: string) =>
    get<{ series_key: string; versions: Version[]; heads: { name: string; branch: string; id: number; number: number; author: string; status: string }[] }>(`${S(p, key)}/annotations`),
  version: (p: string, id: number) => get<Version>(`${P(p)}/annotations/${id}`),
  contentUrl: (p: string, id: number) => `${P(p)}/annotations/${id}/content`,
  content: (p: string, id: number) => get<{ kind: string; content: any }>(`${P(p)}/annotations/${id}/content`),
  /** Save labels, points or boxes (JSON). */
  saveJson: (p: string, key: string, name: string, kind: 'labels' | 'points' | 'boxes', content: unknown, o: SaveOptions) =>
    json<Version>('POST', `${S(p, key)}/annotations/${enc(name)}`, { kind, content, parent: o.parent, new_branch: !!o.new_branch, tool: o.tool ?? 'sobre-web', status: o.status ?? 'draft', comment: o.comment }),
  /** Save a mask: one uint8 per voxel of the series grid, i fastest (gzip-compressed on the way when the browser can). */
  saveMask: async (p: string, key: string, name: string, mask: Uint8Array, o: SaveOptions) => {
    const url = `${S(p, key)}/annotations/${enc(name)}${query({ parent: o.parent ?? undefined, new_branch: o.new_branch ? 'true' : undefined, tool: o.tool ?? 'brush', status: o.status ?? 'draft', comment: o.comment })}`;
    const headers: Record<string, string> = { 'Content-Type': 'application/octet-stream' };
    let body: BodyInit = mask as unknown as BodyInit;
    if (typeof CompressionStream !== 'undefined') {
      body = await new Response(new Blob([mask as BlobPart]).stream().pipeThrough(new CompressionStream('gzip'))).blob();
      headers['Content-Encoding'] = 'gzip';
    }
    const res = await request('POST', url, body, { headers });
    return res.json() as Promise<Version>;
  },
  submit: (p: string, id: number) => json<Version>('POST', `${P(p)}/annotations/${id}/submit`),
  review: (p: string, id: number, decision: 'accept' | 'reject', comment: string) =>
    json<Version>('POST', `${P(p)}/annotations/${id}/review`, { decision, comment }),
  queue: async (p: string) => items(await get<Page<Version> | Version[]>(`${P(p)}/review-queue`)),
  exportUrl: (p: string, id: number, format: 'seg' | 'sr' | 'nifti' | 'csv') => `${P(p)}/annotations/${id}/export?format=${format}`,
  /** Results of the inference service whose annotation project is `p` (state: pending by default). */
  serviceResults: (p: string, state = 'pending') => get<ServiceResult[]>(`${P(p)}/service-results${query({ state })}`),
  serviceResult: (p: string, job: number) => get<ServiceResultDetail>(`${P(p)}/service-results/${job}`),
  acceptResult: (p: string, job: number, comment: string) =>
    json<ServiceResultDetail>('POST', `${P(p)}/service-results/${job}/accept`, { comment: comment || null }),
  rejectResult: (p: string, job: number, reason: string) =>
    json<ServiceResultDetail>('POST', `${P(p)}/service-results/${job}/reject`, { reason }),
  push: (p: string, id: number, format: 'seg' | 'sr') => json<Record<string, unknown>>('POST', `${P(p)}/annotations/${id}/push`, { format }),
};
