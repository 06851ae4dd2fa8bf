/**
 * Dev-server stand-ins for API routes the front end needs and the server does not provide yet.
 * Each entry names the route as docs/workstation.md should describe it; remove it when the server has it.
 * Only `npm run dev` uses this (never the build).
 */
import type { Plugin } from 'vite';

type Handler = (url: URL) => { status: number; body: unknown } | null;
const ROUTES: [RegExp, Handler][] = [
  // (none: every route the front end uses is in docs/workstation.md)
];

export function mockApi(): Plugin {
  return {
    name: 'sobre-mock-api',
    apply: 'serve',
    configureServer(server) {
      server.middlewares.use((req, res, next) => {
        const url = new URL(req.url ?? '/', 'http://localhost');
        for (const [re, handler] of ROUTES) {
          if (!re.test(url.pathname)) continue;
          const got = handler(url);
          if (!got) break;
          res.statusCode = got.status;
          res.setHeader('Content-Type', 'application/json');
          res.end(JSON.stringify(got.body));
          return;
        }
        next();
      });
    },
  };
}
