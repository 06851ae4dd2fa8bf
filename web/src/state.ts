/** The logged-in session (user, roles, allowed actions per project) and a tiny hash router. */
import { api, setCsrf, type Session } from './api';

export let session: Session | null = null;

export function setSession(s: Session | null): void {
  session = s;
  setCsrf(s?.csrf_token ?? '');
}

export async function restoreSession(): Promise<Session | null> {
  try {
    setSession(await api.session());
  } catch {
    setSession(null);
  }
  return session;
}

export function can(project: string, action: string): boolean {
  if (!session) return false;
  return (session.projects?.[project] ?? []).includes(action);
}

export interface Route { path: string[]; params: URLSearchParams }

export function currentRoute(): Route {
  const raw = location.hash.replace(/^#\/?/, '');
  const [p, q] = raw.split('?');
  return { path: p ? p.split('/').map((x) => decodeURIComponent(x)) : [], params: new URLSearchParams(q ?? '') };
}

export function href(path: (string | number)[], params?: Record<string, string | number | undefined>): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params ?? {})) if (v !== undefined && v !== '') q.set(k, String(v));
  const qs = q.toString();
  return '#/' + path.map((x) => encodeURIComponent(String(x))).join('/') + (qs ? `?${qs}` : '');
}

export function go(path: (string | number)[], params?: Record<string, string | number | undefined>): void {
  location.hash = href(path, params);
}
