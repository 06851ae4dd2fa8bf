/** Sobre workstation front end: login → browse → view/annotate → review. Hash routes, no framework. */
import './style.css';
import { onLoggedOut, api } from './api';
import { errorBox } from './ui';
import { h, replace } from './dom';
import { currentRoute, go, href, restoreSession, session, setSession } from './state';
import { loginPage } from './pages/login';
import { projectsPage, projectPage, subjectPage } from './pages/browse';
import { reviewPage } from './pages/review';

const app = document.getElementById('app')!;
let cleanup: (() => void) | null = null;

function topBar(): HTMLElement {
  const r = currentRoute();
  const crumbs: (HTMLElement | string)[] = [h('a', { href: '#/' }, 'Projects')];
  if (r.path[0] === 'p' && r.path[1]) {
    crumbs.push(' / ', h('a', { href: href(['p', r.path[1]]) }, r.path[1]));
    if (r.path[2] === 'subject') crumbs.push(' / ', h('span', null, `subject ${r.path[3] ?? ''}`));
    if (r.path[2] === 'series') crumbs.push(' / ', h('span', null, 'viewer'));
    if (r.path[2] === 'review') crumbs.push(' / ', h('span', null, 'review queue'));
  }
  return h('header', { class: 'topbar' },
    h('span', { class: 'brand' }, 'Sobre'),
    h('nav', { class: 'crumbs' }, crumbs),
    h('span', { class: 'user' }, session ? `${session.user.display_name}` : ''),
    session ? h('button', {
      class: 'link', onclick: async () => {
        try { await api.logout(); } catch { /* already gone */ }
        setSession(null);
        go(['login']);
      },
    }, 'Log out') : null);
}

async function render(): Promise<void> {
  if (cleanup) { const c = cleanup; cleanup = null; try { c(); } catch (e) { console.error(e); } }
  const r = currentRoute();
  if (!session && r.path[0] !== 'login') {
    await restoreSession();
    if (!session) { go(['login'], { next: location.hash }); return; }
  }
  const main = h('main', { class: r.path[2] === 'series' ? 'main viewer-main' : 'main' });
  replace(app, r.path[0] === 'login' ? '' : topBar(), main);
  try {
    if (r.path[0] === 'login') cleanup = loginPage(main, r.params.get('next'));
    else if (r.path.length === 0) await projectsPage(main);
    else if (r.path[0] === 'p' && r.path.length === 2) await projectPage(main, r.path[1], r.params);
    else if (r.path[0] === 'p' && r.path[2] === 'subject') await subjectPage(main, r.path[1], r.path[3], r.params);
    else if (r.path[0] === 'p' && r.path[2] === 'series') {
      const { viewerPage } = await import('./viewer/page');
      cleanup = await viewerPage(main, r.path[1], r.path[3], r.params);
    } else if (r.path[0] === 'p' && r.path[2] === 'review') await reviewPage(main, r.path[1]);
    else replace(main, h('p', null, 'No such page. '), h('a', { href: '#/' }, 'Projects'));
  } catch (err) {
    main.appendChild(errorBox(err));
  }
}

onLoggedOut(() => {
  setSession(null);
  if (currentRoute().path[0] !== 'login') go(['login'], { next: location.hash });
});
window.addEventListener('hashchange', () => { void render(); });
void render();
