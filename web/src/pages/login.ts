import { api } from '../api';
import { h, replace } from '../dom';
import { setSession } from '../state';
import { errorBox } from '../ui';

export function loginPage(main: HTMLElement, next: string | null): () => void {
  const user = h('input', { name: 'username', autocomplete: 'username', required: true, autofocus: true });
  const pass = h('input', { name: 'password', type: 'password', autocomplete: 'current-password', required: true });
  const msg = h('div', { class: 'msg' });
  const form = h('form', { class: 'login card' },
    h('h1', null, 'Sobre workstation'),
    h('label', null, 'User name', user),
    h('label', null, 'Password', pass),
    h('button', { type: 'submit', class: 'primary' }, 'Log in'),
    msg);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    replace(msg);
    try {
      setSession(await api.login(user.value, pass.value));
      location.hash = next && next.startsWith('#/') && !next.startsWith('#/login') ? next : '#/';
    } catch (err) {
      replace(msg, errorBox(err));
    }
  });
  replace(main, form);
  return () => {};
}
