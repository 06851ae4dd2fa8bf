// The workstation front end. `npm run build` writes into the server's static folder (git-ignored).
// `npm run dev` serves it with hot reload and forwards /api to a running `sobre serve` (SOBRE_API,
// default http://127.0.0.1:8000); web/mock/ answers routes the server does not have yet (none today).
import { defineConfig } from 'vite';
import { resolve } from 'node:path';
import { halfFloatTextures } from './vite.patches.ts';
import { mockApi } from './mock/mock.ts';

const here = import.meta.dirname;
export default defineConfig({
  root: here,
  base: './',
  plugins: [halfFloatTextures(), mockApi()],
  build: {
    outDir: resolve(here, '../src/sobre/server/static'),
    emptyOutDir: true,
    target: 'es2022',
    chunkSizeWarningLimit: 8000,
    sourcemap: false,
  },
  worker: { format: 'es' },
  server: {
    port: 5173,
    strictPort: true,
    proxy: { '/api': { target: process.env.SOBRE_API ?? 'http://127.0.0.1:8000', changeOrigin: false } },
  },
});
