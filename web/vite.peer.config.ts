// Builds the benchmark pages (bench/bench_viewer.py): the NiiVue peer and a bare Cornerstone3D page.
import { defineConfig } from 'vite';
import { resolve } from 'node:path';
import { halfFloatTextures } from './vite.patches.ts';

const here = import.meta.dirname;
export default defineConfig({
  root: resolve(here, 'bench'),
  base: './',
  logLevel: 'warn',
  plugins: [halfFloatTextures()],
  build: {
    outDir: resolve(here, '../bench/out/viewer-pages'),
    emptyOutDir: true,
    chunkSizeWarningLimit: 8000,
    rollupOptions: { input: { cs3d: resolve(here, 'bench/cs3d.html'), niivue: resolve(here, 'bench/niivue.html') } },
  },
  worker: { format: 'es' },
});
