import { init, RenderingEngine, Enums, volumeLoader, setVolumesForViewports, utilities as csUtils } from '@cornerstonejs/core';
const t0 = performance.now();
const marks: Record<string, number> = {};
const mark = (k: string) => { marks[k] = performance.now() - t0; };
(window as any).__bench = { marks, done: false };
async function main() {
  const q0 = new URLSearchParams(location.search);
  const rendering: any = {};
  if (q0.has('hf')) (globalThis as any).__sobreHalfFloatTextures = true;
  if (q0.get('mode')) rendering.renderingEngineMode = q0.get('mode');
  if (q0.has('half')) rendering.preferSizeOverAccuracy = true;
  await init({ rendering } as any);
  mark('init');
  if (q0.has('wait')) {
    (window as any).__bench.ready = true;
    await new Promise<void>((r) => { (window as any).__go = r; });
    mark('go');
  }
  const meta = await (await fetch('/vol.json')).json();
  const buf = await (await fetch('/vol.raw')).arrayBuffer();
  mark('fetched');
  const scalarData = new Int16Array(buf);
  const re = new RenderingEngine('re');
  const el = (id: string) => document.getElementById(id) as HTMLDivElement;
  re.setViewports([
    { viewportId: 'axial', type: Enums.ViewportType.ORTHOGRAPHIC, element: el('axial'), defaultOptions: { orientation: Enums.OrientationAxis.AXIAL } },
    { viewportId: 'sagittal', type: Enums.ViewportType.ORTHOGRAPHIC, element: el('sagittal'), defaultOptions: { orientation: Enums.OrientationAxis.SAGITTAL } },
    { viewportId: 'coronal', type: Enums.ViewportType.ORTHOGRAPHIC, element: el('coronal'), defaultOptions: { orientation: Enums.OrientationAxis.CORONAL } },
    { viewportId: 'vr', type: Enums.ViewportType.VOLUME_3D, element: el('vr'), defaultOptions: { orientation: Enums.OrientationAxis.CORONAL } },
  ]);
  const vol = volumeLoader.createLocalVolume('ct1', {
    scalarData, dimensions: meta.dimensions, spacing: meta.spacing, origin: meta.origin, direction: meta.direction,
    metadata: { Modality: 'CT', FrameOfReferenceUID: '1.2.3', BitsAllocated: 16, BitsStored: 16, HighBit: 15,
      PixelRepresentation: 1, SamplesPerPixel: 1, PhotometricInterpretation: 'MONOCHROME2',
      voiLut: [{ windowCenter: 40, windowWidth: 400 }] } as any,
  } as any);
  mark('volume');

  await setVolumesForViewports(re, [{ volumeId: 'ct1' }], ['axial', 'sagittal', 'coronal']);
  for (const id of ['axial', 'sagittal', 'coronal']) (re.getViewport(id) as any).setProperties({ voiRange: { lower: -160, upper: 240 } });
  const rendered = (id: string) => new Promise<void>((res) => el(id).addEventListener(Enums.Events.IMAGE_RENDERED, () => res(), { once: true }));
  const all = Promise.all(['axial', 'sagittal', 'coronal'].map(rendered));
  re.renderViewports(['axial', 'sagittal', 'coronal']);
  await all;
  mark('mpr0');
  if (!location.search.includes('norerender')) {
    const again = Promise.all(['axial', 'sagittal', 'coronal'].map(rendered));
    re.renderViewports(['axial', 'sagittal', 'coronal']);
    await again;
  }
  mark('mpr');
  if (!location.search.includes('no3d')) {
    await setVolumesForViewports(re, [{ volumeId: 'ct1' }], ['vr']);
    const vp: any = re.getViewport('vr');
    vp.setProperties({ preset: 'CT-Bone' });
    const r = rendered('vr');
    vp.render();
    await r;
    mark('vr');
  }
  const ax: any = re.getViewport('axial');
  const q = new URLSearchParams(location.search);
  if (q.get('slice')) { await csUtils.jumpToSlice(el('axial'), { imageIndex: Number(q.get('slice')) }); ax.render(); await new Promise((r) => setTimeout(r, 500)); }
  (window as any).__bench.axial = { cam: ax.getCamera(), n: ax.getNumberOfSlices?.(), idx: ax.getSliceIndex?.() };
  (window as any).__bench.done = true;
}
main().catch((e) => { (window as any).__bench.error = String(e?.stack || e); });
