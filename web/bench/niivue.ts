import { Niivue, SLICE_TYPE } from '@niivue/niivue';
const t0 = performance.now();
const marks: Record<string, number> = {};
const mark = (k: string) => { marks[k] = performance.now() - t0; };
(window as any).__bench = { marks, done: false };
async function main() {
  const nv = new Niivue({ backColor: [0, 0, 0, 1] });
  await nv.attachTo('gl');
  mark('init');
  nv.setSliceType(SLICE_TYPE.MULTIPLANAR);
  nv.opts.multiplanarShowRender = 1 as any; // always show the 3D render tile
  await nv.loadVolumes([{ url: '/vol.nii', cal_min: -160, cal_max: 240 }]);
  nv.drawScene();
  mark('mpr');
  (window as any).__bench.done = true;
}
main().catch((e) => { (window as any).__bench.error = String(e?.stack || e); });
