/**
 * The viewer: axial/sagittal/coronal MPR with a synchronised crosshair and a 3D rendering (Cornerstone3D),
 * window/level presets, measurements, mask and heat-map overlays, and annotation (masks, points, boxes,
 * image labels) saved as immutable versions on the server. Radiographs and ultrasound: one 2D viewport.
 *
 * Loading: the middle slice is fetched alone and drawn at once (first image) while the whole volume
 * streams into the one typed array the viewer keeps; Cornerstone3D's volume is made of views of it.
 */
import {
  RenderingEngine, Enums as csEnums, volumeLoader, setVolumesForViewports, imageLoader, cache, eventTarget, metaData,
  utilities as csUtils, type Types,
} from '@cornerstonejs/core';
import {
  ToolGroupManager, Enums as toolsEnums, segmentation, annotation as csAnnotation, utilities as toolsUtils,
  synchronizers, SynchronizerManager, WindowLevelTool, PanTool, ZoomTool, StackScrollTool, CrosshairsTool, LengthTool,
  EllipticalROITool, ProbeTool, RectangleROITool, BrushTool, PaintFillTool, TrackballRotateTool,
} from '@cornerstonejs/tools';
import { api, ApiError, type Geometry, type LabelDef, type Project, type SeriesDetail, type SeriesRecord, type Version } from '../api';
import { download, fmt, h, replace, rgb, type Child } from '../dom';
import { can, session } from '../state';
import { choose, errorBox, errorText, simulatedBadge, statusChip, toast } from '../ui';
import { destroyEngine, Fill3DTool, initCornerstone, softwareWebGL, TEXTURE_BATCH } from './cs';
import { drawPlane, fetchSlice, streamVolume, windowOf, type Voxels } from './volume';

const MPR = ['axial', 'sagittal', 'coronal'] as const;
type Vp = typeof MPR[number] | 'vr' | 'image';

/** Window presets: [centre, width]. MR and others: "auto" = the server's window (DICOM, else 0.5–99.5 %). */
export const PRESETS: Record<string, [number, number]> = {
  'CT brain': [40, 80], 'CT lung': [-600, 1500], 'CT mediastinum': [50, 350], 'CT bone': [400, 1800], 'CT liver': [60, 160],
};

interface Timings { [k: string]: number }
const timings: Timings = {};
let t0 = 0;
function mark(name: string): void { timings[name] = Math.round(performance.now() - t0); }

let seq = 0;

export async function viewerPage(main: HTMLElement, project: string, key: string, params: URLSearchParams): Promise<() => void> {
  t0 = performance.now();
  for (const k of Object.keys(timings)) delete timings[k];
  const id = `v${++seq}`;
  const abort = new AbortController();
  const disposers: (() => void)[] = [() => abort.abort()];
  const hooks: Record<string, unknown> = { timings, project, key };
  (window as any).__sobre = hooks;

  // ------------------------------------------------------------------ layout
  const status = h('div', { class: 'viewer-status', role: 'status' }, 'Loading…');
  const progress = h('progress', { max: 1, value: 0, class: 'load-progress' });
  const toolbar = h('div', { class: 'toolbar' });
  const side = h('aside', { class: 'side' });
  const panes: Record<string, HTMLDivElement> = {};
  const paneLabels: Record<string, HTMLElement> = {};
  const mkPane = (name: Vp, title: string) => {
    const el = h('div', { class: 'vp', dataset: { viewport: name }, oncontextmenu: (e: Event) => e.preventDefault() });
    panes[name] = el;
    paneLabels[name] = h('span', { class: 'vp-info' });
    return h('div', { class: 'pane', dataset: { pane: name } }, el, h('span', { class: 'vp-title' }, title), paneLabels[name]);
  };
  const grid = h('div', { class: 'vgrid' });
  replace(main, h('div', { class: 'viewer' }, h('div', { class: 'viewer-top' }, toolbar, status, progress), grid, side));

  const [detail, proj] = await Promise.all([api.seriesDetail(project, key), api.project(project)]);
  const g: Geometry = detail.volume;
  const is2d = !!g.is_2d || g.dimensions[2] === 1;
  const show3d = !is2d && params.get('3d') !== '0';
  hooks.geometry = g;
  mark('detail');
  if (is2d) grid.classList.add('one'), grid.appendChild(mkPane('image', detail.modality ?? '2D'));
  else for (const [n, t] of [['axial', 'Axial'], ['sagittal', 'Sagittal'], ['coronal', 'Coronal'], ['vr', '3D']] as const) if (n !== 'vr' || show3d) grid.appendChild(mkPane(n, t));

  // ------------------------------------------------------------------ first image (one slice) while the volume streams
  const preview = h('canvas', { class: 'preview' });
  let previewShown = false;
  const firstPane = is2d ? panes.image : panes.axial;
  firstPane.parentElement!.appendChild(preview);
  // the window: the DICOM one when the header states it, else the server's percentiles (slice/volume headers)
  let win0: [number, number] = g.window ? [g.window.center, g.window.width] : [0, 0];
  const K = g.dimensions[2];
  const aspect = g.spacing[1] / g.spacing[0];
  const slicePromise = is2d ? Promise.resolve() : fetchSlice(api.sliceUrl(project, key, Math.floor(K / 2), { format: 'raw' }), g.dtype, abort.signal)
    .then(({ data, width, height, window }) => {
      if (!win0[1] && window) win0 = window;
      if (!document.body.contains(preview)) return;
      drawPlane(preview, data, width, height, win0[0], win0[1], aspect, g.components);
      previewShown = true;
      mark('firstImage');
      status.textContent = 'First slice shown; loading the volume…';
    }).catch((e) => { if (!abort.signal.aborted) console.warn('first slice', e); });

  const csReady = initCornerstone().then(() => mark('csReady'));
  let voxels: Voxels;
  try {
    voxels = await streamVolume(api.volumeUrl(project, key), g, (f) => { progress.value = f; }, abort.signal,
      (res) => { const w = windowOf(res); if (w && !win0[1]) win0 = w; });
  } catch (err) {
    if (abort.signal.aborted) return () => {};
    status.replaceChildren(errorBox(err));
    throw err;
  }
  mark('volumeLoaded');
  hooks.voxels = () => voxels;
  await Promise.all([csReady, slicePromise]);
  if (!win0[1]) win0 = [0, 1];

  // ------------------------------------------------------------------ Cornerstone3D
  const engineId = `re-${id}`;
  const re = new RenderingEngine(engineId);
  disposers.push(() => destroyEngine(engineId));
  const volumeId = `sobre-${id}-ct`;
  const meta = {
    Modality: detail.modality ?? 'OT', FrameOfReferenceUID: `sobre-${id}`, BitsAllocated: voxels.BYTES_PER_ELEMENT * 8,
    BitsStored: voxels.BYTES_PER_ELEMENT * 8, HighBit: voxels.BYTES_PER_ELEMENT * 8 - 1, PixelRepresentation: g.dtype === 'int16' ? 1 : 0,
    SamplesPerPixel: g.components, PhotometricInterpretation: g.components === 3 ? 'RGB' : 'MONOCHROME2',
    voiLut: [{ windowCenter: win0[0], windowWidth: win0[1] }], PixelSpacing: [g.spacing[1], g.spacing[0]],
    ImageOrientationPatient: g.direction.slice(0, 6), Rows: g.dimensions[1], Columns: g.dimensions[0],
  };
  const mprIds: string[] = is2d ? ['image'] : [...MPR];
  const provider = planeMetadata(`sobre-${id}-`, g, meta);
  metaData.addProvider(provider, 10000);
  disposers.push(() => (metaData as any).removeProvider?.(provider));
  const tgId = `tg-${id}`;
  const tg3dId = `tg3d-${id}`;
  const voiSyncId = `voi-${id}`;
  disposers.push(() => {
    try { ToolGroupManager.destroyToolGroup(tgId); } catch { /* */ }
    try { ToolGroupManager.destroyToolGroup(tg3dId); } catch { /* */ }
    try { SynchronizerManager.destroySynchronizer(voiSyncId); } catch { /* */ }
    try { segmentation.removeAllSegmentations(); } catch { /* */ }
    try { csAnnotation.state.removeAllAnnotations(); } catch { /* */ }
    try { cache.purgeCache(); } catch { /* */ }
  });

  let labelmap: Uint8Array | null = null;
  const segId = `sobre-${id}-seg`;
  // a viewport's frame has reached its canvas: IMAGE_RENDERED, then one pixel read back (the GPU work is done)
  const rendered = (vid: string) => new Promise<void>((res) => panes[vid].addEventListener(csEnums.Events.IMAGE_RENDERED, () => {
    const c = panes[vid].querySelector('canvas') as HTMLCanvasElement | null;
    try { c?.getContext('2d')?.getImageData(Math.floor(c.width / 2), Math.floor(c.height / 2), 1, 1); } catch { /* not a 2D canvas */ }
    res();
  }, { once: true }));

  if (is2d) {
    // one 2D image (radiograph, ultrasound frame, optical): a stack viewport over a local image
    re.setViewports([{ viewportId: 'image', type: csEnums.ViewportType.STACK, element: panes.image, defaultOptions: { background: [0, 0, 0] } }]);
    const imageId = `sobre-${id}-img`;
    (imageLoader as any).createAndCacheLocalImage(imageId, {
      scalarData: voxels, dimensions: [g.dimensions[0], g.dimensions[1]], spacing: [g.spacing[0], g.spacing[1]],
      origin: g.origin, direction: g.direction, frameOfReferenceUID: meta.FrameOfReferenceUID,
    });
    const vp: any = re.getViewport('image');
    const done = rendered('image');
    await vp.setStack([imageId]);
    if (g.components === 1) vp.setProperties({ voiRange: toRange(win0) });
    vp.render();
    await done;
  } else {
    re.setViewports([
      { viewportId: 'axial', type: csEnums.ViewportType.ORTHOGRAPHIC, element: panes.axial, defaultOptions: { orientation: csEnums.OrientationAxis.AXIAL, background: [0, 0, 0] } },
      { viewportId: 'sagittal', type: csEnums.ViewportType.ORTHOGRAPHIC, element: panes.sagittal, defaultOptions: { orientation: csEnums.OrientationAxis.SAGITTAL, background: [0, 0, 0] } },
      { viewportId: 'coronal', type: csEnums.ViewportType.ORTHOGRAPHIC, element: panes.coronal, defaultOptions: { orientation: csEnums.OrientationAxis.CORONAL, background: [0, 0, 0] } },
      ...(show3d ? [{ viewportId: 'vr', type: csEnums.ViewportType.VOLUME_3D, element: panes.vr, defaultOptions: { orientation: csEnums.OrientationAxis.CORONAL, background: [0.05, 0.05, 0.08] as Types.Point3 } }] : []),
    ]);
    volumeLoader.createLocalVolume(volumeId, {
      scalarData: voxels as any, dimensions: g.dimensions, spacing: g.spacing, origin: g.origin, direction: g.direction as any, metadata: meta as any,
    } as any);
    // the texture is filled TEXTURE_BATCH slices per render (cs.ts, web/vite.patches.ts)
    const batched: Set<string> | undefined = (globalThis as any).__sobreBatchedVolumes;
    batched?.add(volumeId);
    disposers.push(() => batched?.delete(volumeId));
    await setVolumesForViewports(re, [{ volumeId }], [...MPR]);
    for (const v of MPR) (re.getViewport(v) as any).setProperties({ voiRange: toRange(win0) });
    // the first frame can reach the screen before the shared texture is filled: render until no slice is
    // left to upload, and at least twice
    const tex: any = (cache.getVolume(volumeId) as any)?.vtkOpenGLTexture;
    const passes = 2 + Math.ceil(K / Math.max(1, Number((globalThis as any).__sobreTextureBatch) || TEXTURE_BATCH));
    for (let pass = 0; pass < passes && (pass < 2 || tex?.hasUpdatedFrames?.()); pass++) {
      const all = Promise.all(MPR.map(rendered));
      re.renderViewports([...MPR]);
      await all;
    }
  }
  preview.remove();
  mark('mprReady');
  status.textContent = '';
  progress.remove();

  // ------------------------------------------------------------------ tools
  const tg: any = ToolGroupManager.createToolGroup(tgId);
  for (const v of mprIds) tg.addViewport(v, engineId);
  for (const T of [WindowLevelTool, PanTool, ZoomTool, StackScrollTool, LengthTool, EllipticalROITool, ProbeTool, PaintFillTool, Fill3DTool]) tg.addTool((T as any).toolName);
  if (!is2d) tg.addTool(CrosshairsTool.toolName, { getReferenceLineColor: (v: string) => ({ axial: 'rgb(220, 60, 60)', sagittal: 'rgb(230, 200, 40)', coronal: 'rgb(60, 200, 60)' } as any)[v] ?? 'white' });
  tg.addToolInstance('Landmark', ProbeTool.toolName);
  tg.addToolInstance('Box', RectangleROITool.toolName);
  tg.addToolInstance('Brush', BrushTool.toolName, { activeStrategy: 'FILL_INSIDE_CIRCLE' });
  tg.addToolInstance('Brush3D', BrushTool.toolName, { activeStrategy: 'FILL_INSIDE_SPHERE' });
  tg.addToolInstance('Eraser', BrushTool.toolName, { activeStrategy: 'ERASE_INSIDE_CIRCLE' });
  tg.addToolInstance('Eraser3D', BrushTool.toolName, { activeStrategy: 'ERASE_INSIDE_SPHERE' });
  tg.addToolInstance('Threshold', BrushTool.toolName, { activeStrategy: 'THRESHOLD_INSIDE_CIRCLE' });
  tg.addToolInstance('Threshold3D', BrushTool.toolName, { activeStrategy: 'THRESHOLD_INSIDE_SPHERE' });
  tg.setToolActive(StackScrollTool.toolName, { bindings: [{ mouseButton: toolsEnums.MouseBindings.Wheel }] });
  tg.setToolActive(PanTool.toolName, { bindings: [{ mouseButton: toolsEnums.MouseBindings.Auxiliary }] });
  tg.setToolActive(ZoomTool.toolName, { bindings: [{ mouseButton: toolsEnums.MouseBindings.Secondary }] });
  if (show3d) {
    const tg3: any = ToolGroupManager.createToolGroup(tg3dId);
    tg3.addViewport('vr', engineId);
    for (const T of [TrackballRotateTool, ZoomTool, PanTool]) tg3.addTool(T.toolName);
    tg3.setToolActive(TrackballRotateTool.toolName, { bindings: [{ mouseButton: toolsEnums.MouseBindings.Primary }] });
    tg3.setToolActive(ZoomTool.toolName, { bindings: [{ mouseButton: toolsEnums.MouseBindings.Secondary }] });
    tg3.setToolActive(PanTool.toolName, { bindings: [{ mouseButton: toolsEnums.MouseBindings.Auxiliary }] });
  }
  if (!is2d) {
    const voiSync = synchronizers.createVOISynchronizer(voiSyncId, { syncInvertState: false, syncColormap: false } as any);
    for (const v of MPR) voiSync.add({ renderingEngineId: engineId, viewportId: v });
  }
  const primaryTools = ['WindowLevel', 'Crosshairs', 'Pan', 'Zoom', 'Length', 'EllipticalROI', 'Probe', 'Landmark', 'Box',
    'Brush', 'Brush3D', 'Eraser', 'Eraser3D', 'Threshold', 'Threshold3D', 'PaintFill', 'Fill3D'];
  let activeTool = '';
  const toolButtons: Record<string, HTMLButtonElement> = {};
  function setTool(name: string): void {
    if (is2d && (name === 'Crosshairs' || name.endsWith('3D'))) return;
    if (['Brush', 'Brush3D', 'Eraser', 'Eraser3D', 'Threshold', 'Threshold3D', 'PaintFill', 'Fill3D'].includes(name)) {
      if (!ensureLabelmap()) return;
    }
    if (activeTool) tg.setToolPassive(activeTool);
    tg.setToolActive(name, { bindings: [{ mouseButton: toolsEnums.MouseBindings.Primary }] });
    activeTool = name;
    for (const [n, b] of Object.entries(toolButtons)) b.classList.toggle('active', n === name);
    hooks.activeTool = name;
  }

  // ------------------------------------------------------------------ window / level
  const isCT = (detail.modality ?? '').toUpperCase() === 'CT';
  const presetSelect = h('select', { name: 'preset', title: 'Window presets' },
    h('option', { value: 'auto' }, isCT ? 'Auto (series)' : 'Auto'),
    isCT ? Object.keys(PRESETS).map((p) => h('option', { value: p }, p)) : null);
  const cInput = h('input', { type: 'number', name: 'wc', value: String(round(win0[0])), title: 'window centre', class: 'num' });
  const wInput = h('input', { type: 'number', name: 'ww', value: String(round(win0[1])), title: 'window width', min: 1, class: 'num' });
  function setWindow(c: number, w: number): void {
    if (!(w > 0)) return;
    for (const v of mprIds) (re.getViewport(v) as any).setProperties({ voiRange: toRange([c, w]) });
    re.renderViewports(mprIds);
    cInput.value = String(round(c)); wInput.value = String(round(w));
  }
  presetSelect.addEventListener('change', () => { const p = PRESETS[presetSelect.value] ?? win0; setWindow(p[0], p[1]); });
  const onWindowInput = () => setWindow(Number(cInput.value), Number(wInput.value));
  cInput.addEventListener('change', onWindowInput); wInput.addEventListener('change', onWindowInput);
  const onVoi = (evt: any) => {
    const r = evt.detail?.range;
    if (!r || evt.detail?.viewportId === 'vr') return;
    cInput.value = String(round((r.lower + r.upper) / 2)); wInput.value = String(round(r.upper - r.lower));
  };
  for (const v of mprIds) panes[v].addEventListener(csEnums.Events.VOI_MODIFIED, onVoi);

  // slice numbers in each pane, scroll with the arrow keys too
  const updateInfo = () => {
    for (const v of mprIds) {
      const vp: any = re.getViewport(v);
      if (!vp) continue;
      const n = vp.getNumberOfSlices?.() ?? 1;
      const i = vp.getSliceIndex?.() ?? vp.getCurrentImageIdIndex?.() ?? 0;
      paneLabels[v].textContent = n > 1 ? `${i + 1} / ${n}` : '';
    }
  };
  for (const v of mprIds) panes[v].addEventListener(csEnums.Events.IMAGE_RENDERED, updateInfo);
  updateInfo();
  let focusVp = mprIds[0];
  for (const v of mprIds) panes[v].addEventListener('mouseenter', () => { focusVp = v; });
  const onKey = (ev: KeyboardEvent) => {
    if ((ev.target as HTMLElement)?.closest?.('input, textarea, select')) return;
    if (ev.key === 'ArrowUp' || ev.key === 'ArrowDown') {
      ev.preventDefault();
      csUtils.scroll(re.getViewport(focusVp) as any, { delta: ev.key === 'ArrowUp' ? -1 : 1 });
    } else if ((ev.ctrlKey || ev.metaKey) && ev.key.toLowerCase() === 'z') {
      ev.preventDefault();
      ev.shiftKey ? redo() : undo();
    } else if ((ev.ctrlKey || ev.metaKey) && ev.key.toLowerCase() === 'y') { ev.preventDefault(); redo(); }
  };
  document.addEventListener('keydown', onKey);
  disposers.push(() => document.removeEventListener('keydown', onKey));

  const history = (csUtils as any).HistoryMemo.DefaultHistoryMemo;
  function undo(): void { history.undo(); re.render(); }
  function redo(): void { history.redo(); re.render(); }

  // ------------------------------------------------------------------ 3D rendering (after the MPR is usable)
  // In software WebGL (no GPU) the ray caster runs on the CPU and its first frame can take tens of seconds
  // on a loaded machine, holding up the MPR's frames meanwhile: there it starts on request.
  let vrStarted = false;
  const start3d = () => {
    if (vrStarted || !show3d) return;
    vrStarted = true;
    vrButton.remove();
    void (async () => {
      await new Promise((r) => setTimeout(r, 50));
      if (abort.signal.aborted) return;
      const t3 = performance.now();
      const done = rendered('vr');
      // software WebGL ray-casts on the CPU: there the 3D view shows a block-averaged copy of at most ~2 M voxels
      const factor = softwareWebGL() ? Math.ceil(Math.cbrt(g.dimensions[0] * g.dimensions[1] * g.dimensions[2] / 2 ** 21)) : 1;
      let vrVolumeId = volumeId;
      if (factor > 1) {
        const small = downsample(voxels, g.dimensions, factor);
        vrVolumeId = `${volumeId}-3d`;
        volumeLoader.createLocalVolume(vrVolumeId, {
          scalarData: small.data as any, dimensions: small.dims, spacing: g.spacing.map((s) => s * factor) as any,
          // the centre of block (0, 0, 0): half a block in from voxel (0, 0, 0) along each axis
          origin: g.origin.map((o, a) => o + [0, 1, 2].reduce((acc, b) => acc + g.direction[3 * b + a] * (factor - 1) / 2 * g.spacing[b], 0)) as any,
          direction: g.direction as any, metadata: meta as any,
        } as any);
      }
      hooks.vrFactor = factor;
      await setVolumesForViewports(re, [{ volumeId: vrVolumeId }], ['vr']);
      const vr: any = re.getViewport('vr');
      vr.setProperties({ preset: isCT ? 'CT-Bone' : 'MR-Default' });
      vr.render();
      await done;
      mark('vrReady');
      timings.vrRender = Math.round(performance.now() - t3);
    })().catch((e) => console.warn('3D rendering', e));
  };
  const vrButton = h('button', { class: 'vr-start', dataset: { action: 'show-3d' }, onclick: start3d,
    title: 'This browser renders WebGL in software: the first 3D frame can take a while' }, 'Show 3D rendering');
  if (show3d) {
    if (softwareWebGL() && params.get('3d') !== '1') panes.vr.parentElement!.appendChild(vrButton);
    else start3d();
  }
  hooks.show3d = start3d;

  // ------------------------------------------------------------------ annotation state
  const schema = proj.schema ?? { segments: [], labels: [], points: [], boxes: [] };
  const mayEdit = can(project, 'annotation.save');
  const mayReview = can(project, 'annotation.review');
  const mayExport = can(project, 'annotation.export');
  const mayPush = can(project, 'annotation.push');
  const me = session?.user.username ?? '';
  const current: Record<string, Version | null> = {}; // annotation name -> the version being edited (its parent on save)
  let maskName = 'mask';
  let maskDirty = false;
  let versions: Version[] = detail.annotations ?? [];
  const landmarkNames = new Map<string, string>(); // CS3D annotation UID -> schema point name
  const boxNames = new Map<string, string>();

  function ensureLabelmap(): boolean {
    if (labelmap) return true;
    if (!schema.segments.length) { toast('This project defines no mask segments.', 'error'); return false; }
    const n = g.dimensions[0] * g.dimensions[1] * g.dimensions[2];
    labelmap = new Uint8Array(n);
    if (is2d) {
      const lmImageId = `sobre-${id}-lm`;
      (imageLoader as any).createAndCacheLocalImage(lmImageId, {
        scalarData: labelmap, dimensions: [g.dimensions[0], g.dimensions[1]], spacing: [g.spacing[0], g.spacing[1]],
        origin: g.origin, direction: g.direction, frameOfReferenceUID: meta.FrameOfReferenceUID,
      });
      segmentation.addSegmentations([{ segmentationId: segId, representation: { type: toolsEnums.SegmentationRepresentations.Labelmap, data: { imageIds: [lmImageId] } as any } }]);
    } else {
      volumeLoader.createLocalLabelmapVolume({
        scalarData: labelmap, dimensions: g.dimensions, spacing: g.spacing, origin: g.origin, direction: g.direction, metadata: { ...meta, Modality: 'SEG' },
        referencedVolumeId: volumeId,
      } as any, segId);
      segmentation.addSegmentations([{ segmentationId: segId, representation: { type: toolsEnums.SegmentationRepresentations.Labelmap, data: { volumeId: segId } } }]);
    }
    const map: Record<string, any[]> = {};
    for (const v of mprIds) map[v] = [{ segmentationId: segId }];
    segmentation.addLabelmapRepresentationToViewportMap(map);
    for (const v of mprIds) for (const s of schema.segments) segmentation.config.color.setSegmentIndexColor(v, segId, s.value, [...s.color, 255] as any);
    segmentation.segmentIndex.setActiveSegmentIndex(segId, activeSegment);
    segmentation.activeSegmentation.setActiveSegmentation(mprIds[0], segId);
    setMaskOpacity(Number(maskOpacity.value));
    hooks.labelmap = () => labelmap;
    return true;
  }
  const onSegModified = (evt: any) => { if (evt.detail?.segmentationId === segId) { maskDirty = true; renderDirty(); } };
  eventTarget.addEventListener(toolsEnums.Events.SEGMENTATION_DATA_MODIFIED, onSegModified);
  disposers.push(() => eventTarget.removeEventListener(toolsEnums.Events.SEGMENTATION_DATA_MODIFIED, onSegModified));

  function maskChanged(): void {
    if (!labelmap) return;
    segmentation.triggerSegmentationEvents.triggerSegmentationDataModified(segId);
    re.render();
  }

  // fill in 3D: the connected voxels (6-neighbourhood) whose value lies in [lo, hi], from the clicked voxel
  tg.setToolConfiguration('Fill3D', {
    onFill: ({ world }: { world: number[] }) => {
      if (!labelmap) return;
      const ijk = worldToIndex(g, world);
      if (!ijk) return;
      const [lo, hi] = [Number(thrLo.value), Number(thrHi.value)];
      const changed = fill3d(voxels, labelmap, g.dimensions, ijk, lo, hi, activeSegment);
      if (!changed.length) { toast('The clicked voxel is outside the threshold range.', 'error'); return; }
      const lm = labelmap;
      const seg = activeSegment;
      history.push({ id: `fill-${Date.now()}`, restoreMemo: (isUndo?: boolean) => {
        for (let n = 0; n < changed.length; n += 2) lm[changed[n]] = isUndo ? changed[n + 1] : seg;
        maskChanged();
      } });
      maskChanged();
      toast(`Filled ${changed.length / 2} voxels.`);
    },
  });

  // ------------------------------------------------------------------ toolbar
  const tb = (name: string, label: string, title: string) => {
    const b = h('button', { class: 'tool', dataset: { tool: name }, title, onclick: () => setTool(name) }, label);
    toolButtons[name] = b;
    return b;
  };
  replace(toolbar,
    h('div', { class: 'group' }, tb('WindowLevel', 'W/L', 'Window/level (drag)'), is2d ? null : tb('Crosshairs', 'Crosshair', 'Synchronised crosshair'),
      tb('Pan', 'Pan', 'Pan (also middle button)'), tb('Zoom', 'Zoom', 'Zoom (also right button)')),
    h('div', { class: 'group' }, h('label', { class: 'inline' }, 'Window ', presetSelect), cInput, wInput),
    h('div', { class: 'group' }, tb('Length', 'Distance', 'Distance (mm)'), tb('EllipticalROI', 'ROI', 'Elliptical ROI: mean, SD, area'),
      tb('Probe', 'Probe', 'Value at a point')),
    h('div', { class: 'group' }, h('button', { title: 'Undo (Ctrl+Z)', onclick: undo, dataset: { action: 'undo' } }, 'Undo'),
      h('button', { title: 'Redo (Ctrl+Shift+Z)', onclick: redo, dataset: { action: 'redo' } }, 'Redo')));
  setTool('WindowLevel');

  // ------------------------------------------------------------------ side panel
  const info = h('section', { class: 'panel' },
    h('h2', null, detail.modality ?? '', ' ', detail.series_description ?? '', ' ', simulatedBadge(detail.simulated)),
    h('div', { class: 'muted small' }, `subject ${detail.subject_id ?? '—'} · ${detail.study_date ?? ''} · ${g.dimensions.join('×')} · ${g.spacing.map((s) => s.toFixed(2)).join('×')} mm · ${g.dtype}`),
    Object.keys(detail.variables ?? {}).length ? h('details', { class: 'small' }, h('summary', null, 'Clinical variables'),
      h('dl', null, Object.entries(detail.variables).map(([k, v]) => [h('dt', null, k), h('dd', null, fmt(v, 2))]))) : null);

  // segments and mask tools
  let activeSegment = schema.segments[0]?.value ?? 1;
  const maskOpacity = h('input', { type: 'range', min: 0, max: 1, step: 0.05, value: '0.5', name: 'mask-opacity' });
  function setMaskOpacity(a: number): void {
    if (!labelmap) return;
    segmentation.config.style.setStyle({ type: toolsEnums.SegmentationRepresentations.Labelmap, segmentationId: segId }, { fillAlpha: a, fillAlphaInactive: a } as any);
    re.render();
  }
  maskOpacity.addEventListener('input', () => setMaskOpacity(Number(maskOpacity.value)));
  const brushSize = h('input', { type: 'range', min: 1, max: 60, step: 1, value: '12', name: 'brush-size' });
  brushSize.addEventListener('input', () => (toolsUtils as any).segmentation.setBrushSizeForToolGroup(tgId, Number(brushSize.value)));
  (toolsUtils as any).segmentation.setBrushSizeForToolGroup(tgId, 12);
  const thrLo = h('input', { type: 'number', name: 'thr-lo', value: isCT ? '-100' : String(round(win0[0])), class: 'num', title: 'threshold low' });
  const thrHi = h('input', { type: 'number', name: 'thr-hi', value: isCT ? '200' : String(round(win0[0] + win0[1] / 2)), class: 'num', title: 'threshold high' });
  const setThr = () => (toolsUtils as any).segmentation.setBrushThresholdForToolGroup(tgId, [Number(thrLo.value), Number(thrHi.value)]);
  thrLo.addEventListener('change', setThr); thrHi.addEventListener('change', setThr);
  setThr();
  const segList = h('div', { class: 'segments' }, schema.segments.map((s) => h('label', { class: 'segment' },
    h('input', { type: 'radio', name: 'segment', value: String(s.value), checked: s.value === activeSegment, onchange: () => {
      activeSegment = s.value;
      if (labelmap) segmentation.segmentIndex.setActiveSegmentIndex(segId, s.value);
    } }),
    h('span', { class: 'swatch', style: { backgroundColor: rgb(s.color) } }),
    h('span', { class: 'seg-name' }, s.name),
    s.type ? h('span', { class: 'muted small' }, ` ${s.type.meaning} (${s.type.scheme} ${s.type.value})`) : null)));
  const dirtyNote = h('span', { class: 'dirty' });
  function renderDirty(): void { dirtyNote.textContent = maskDirty ? 'unsaved changes' : ''; hooks.maskDirty = maskDirty; }
  const maskVersionInfo = h('div', { class: 'small version-info' });
  const segStats = h('div', { class: 'small seg-stats' });
  const maskPanel = h('section', { class: 'panel' }, h('h3', null, 'Mask'),
    schema.segments.length ? [
      segList,
      mayEdit ? h('div', { class: 'tools' },
        tb('Brush', 'Brush', 'Paint a disc on the slice'), tb('Brush3D', 'Brush 3D', 'Paint a sphere'),
        tb('Eraser', 'Eraser', 'Erase a disc'), tb('Eraser3D', 'Eraser 3D', 'Erase a sphere'),
        tb('Threshold', 'Threshold', 'Paint voxels within the range (disc)'), tb('Threshold3D', 'Threshold 3D', 'Paint voxels within the range (sphere)'),
        tb('PaintFill', 'Fill 2D', 'Fill the enclosed region on the slice'), tb('Fill3D', 'Fill 3D', 'Fill the connected region within the range, in 3D')) : null,
      mayEdit ? h('label', { class: 'inline' }, 'Brush ', brushSize) : null,
      mayEdit ? h('div', { class: 'inline' }, 'Range ', thrLo, ' to ', thrHi) : null,
      h('label', { class: 'inline' }, 'Opacity ', maskOpacity),
      maskVersionInfo, dirtyNote,
      mayEdit ? h('div', { class: 'buttons' },
        h('button', { class: 'primary', dataset: { action: 'save-mask' }, onclick: () => saveMask('draft') }, 'Save draft'),
        h('button', { dataset: { action: 'submit-mask' }, onclick: () => saveMask('submitted') }, 'Submit for review')) : null,
      h('button', { class: 'link', onclick: () => replace(segStats, segmentTable()) }, 'Measure segments (volume, mean, SD)'),
      segStats,
    ] : h('p', { class: 'muted small' }, 'No mask segments in this project\'s schema.'));

  // landmarks and boxes
  let pointName = schema.points[0] ?? '';
  let boxName = schema.boxes[0] ?? '';
  const pointList = h('ul', { class: 'items small points' });
  const boxList = h('ul', { class: 'items small' });
  const pointsPanel = h('section', { class: 'panel' }, h('h3', null, 'Points and boxes'),
    schema.points.length ? h('div', null, h('label', { class: 'inline' }, 'Point ', h('select', { name: 'point-name', onchange: (e: Event) => { pointName = (e.target as HTMLSelectElement).value; } },
      schema.points.map((p) => h('option', { value: p }, p)))), mayEdit ? tb('Landmark', 'Place point', 'Click to place the chosen landmark') : null, pointList,
      mayEdit ? h('button', { onclick: () => saveItems('points'), dataset: { action: 'save-points' } }, 'Save points') : null) : null,
    schema.boxes.length ? h('div', null, h('label', { class: 'inline' }, 'Box ', h('select', { name: 'box-name', onchange: (e: Event) => { boxName = (e.target as HTMLSelectElement).value; } },
      schema.boxes.map((p) => h('option', { value: p }, p)))), mayEdit ? tb('Box', 'Draw box', 'Drag to draw the chosen box') : null, boxList,
      mayEdit ? h('button', { onclick: () => saveItems('boxes'), dataset: { action: 'save-boxes' } }, 'Save boxes') : null) : null,
    !schema.points.length && !schema.boxes.length ? h('p', { class: 'muted small' }, 'No points or boxes in this project\'s schema.') : null);

  // image-level labels
  const labelInputs = new Map<string, () => unknown>();
  const labelsForm = h('form', { class: 'labels', onsubmit: (e: Event) => { e.preventDefault(); void saveLabels(); } },
    schema.labels.map((l) => labelField(l, labelInputs)),
    mayEdit && schema.labels.length ? h('button', { type: 'submit' }, 'Save labels') : null);
  const labelsPanel = schema.labels.length ? h('section', { class: 'panel' }, h('h3', null, 'Labels'), labelsForm) : null;

  // measurements
  const measureList = h('ul', { class: 'items small measurements' });
  const measurePanel = h('section', { class: 'panel' }, h('h3', null, 'Measurements'), measureList);

  // overlays (another series on the same grid as a heat map)
  const overlayPanel = h('section', { class: 'panel' }, h('h3', null, 'Overlay'), h('p', { class: 'muted small' }, 'Loading…'));

  // versions and review
  const versionsPanel = h('section', { class: 'panel versions' }, h('h3', null, 'Versions'));
  replace(side, info, maskPanel, pointsPanel, labelsPanel, measurePanel, overlayPanel, versionsPanel);
  // the toolbar and panels changed the panes' sizes: fit the cameras again; later resizes keep them
  re.resize(true, false);
  for (const v of mprIds) (re.getViewport(v) as any).resetCamera?.({ resetPan: true, resetZoom: true, resetToCenter: true });
  re.renderViewports(mprIds);
  hooks.cameras = () => mprIds.map((v) => (re.getViewport(v) as any).getCamera());
  let resizeTimer = 0;
  const ro = new ResizeObserver(() => { clearTimeout(resizeTimer); resizeTimer = window.setTimeout(() => re.resize(true, true), 100); });
  ro.observe(grid);
  disposers.push(() => ro.disconnect());

  // ------------------------------------------------------------------ measurements and named points/boxes
  const annotationEvents = [toolsEnums.Events.ANNOTATION_COMPLETED, toolsEnums.Events.ANNOTATION_MODIFIED, toolsEnums.Events.ANNOTATION_REMOVED];
  const onAnnotation = (evt: any) => {
    const ann = evt.detail?.annotation;
    const tool = ann?.metadata?.toolName;
    if (evt.type === toolsEnums.Events.ANNOTATION_COMPLETED && ann) {
      if (tool === 'Landmark' && !landmarkNames.has(ann.annotationUID)) landmarkNames.set(ann.annotationUID, pointName);
      if (tool === 'Box' && !boxNames.has(ann.annotationUID)) boxNames.set(ann.annotationUID, boxName);
    }
    renderMeasurements();
  };
  for (const e of annotationEvents) eventTarget.addEventListener(e, onAnnotation);
  disposers.push(() => { for (const e of annotationEvents) eventTarget.removeEventListener(e, onAnnotation); });

  function allAnnotations(): any[] { return (csAnnotation.state.getAllAnnotations?.() ?? []) as any[]; }
  function renderMeasurements(): void {
    const anns = allAnnotations();
    const rows: Child[] = [];
    for (const a of anns) {
      const tool = a.metadata?.toolName;
      const stats: any = Object.values(a.data?.cachedStats ?? {})[0] ?? {};
      if (tool === 'Length') rows.push(h('li', null, `distance ${fmt(stats.length, 1)} ${stats.unit ?? 'mm'}`));
      else if (tool === 'EllipticalROI') rows.push(h('li', null, `ROI mean ${fmt(stats.mean, 1)} SD ${fmt(stats.stdDev, 1)} ${stats.modalityUnit ?? ''} · area ${fmt(stats.area, 1)} ${stats.areaUnit ?? 'mm²'}`));
      else if (tool === 'Probe') rows.push(h('li', null, `value ${fmt(stats.value, 1)} ${stats.modalityUnit ?? ''} at ${fmtPoint(a.data?.handles?.points?.[0])}`));
    }
    replace(measureList, rows.length ? rows : h('li', { class: 'muted' }, 'Distance, ROI and probe results appear here.'));
    replace(pointList, anns.filter((a) => a.metadata?.toolName === 'Landmark').map((a) => h('li', null,
      h('strong', null, landmarkNames.get(a.annotationUID) ?? '?'), ` ${fmtPoint(a.data?.handles?.points?.[0])}`)));
    replace(boxList, anns.filter((a) => a.metadata?.toolName === 'Box').map((a) => {
      const b = boxOf(a);
      return h('li', null, h('strong', null, boxNames.get(a.annotationUID) ?? '?'), ` ${fmtPoint(b.min)} – ${fmtPoint(b.max)}`);
    }));
    hooks.measurements = anns.map((a) => ({ tool: a.metadata?.toolName, stats: Object.values(a.data?.cachedStats ?? {})[0] ?? null }));
  }
  renderMeasurements();

  function segmentTable(): HTMLElement {
    if (!labelmap) return h('p', { class: 'muted' }, 'No mask yet.');
    const voxelMl = g.spacing[0] * g.spacing[1] * g.spacing[2] / 1000;
    const stats = segmentStats(voxels, labelmap, g.components);
    const rows = schema.segments.map((s) => {
      const st = stats.get(s.value);
      return h('tr', null, h('td', null, h('span', { class: 'swatch', style: { backgroundColor: rgb(s.color) } }), ' ', s.name),
        h('td', null, fmt(st?.n ?? 0)), h('td', null, fmt((st?.n ?? 0) * voxelMl, 2)), h('td', null, st ? fmt(st.mean, 1) : '—'), h('td', null, st ? fmt(st.sd, 1) : '—'));
    });
    hooks.segmentStats = Object.fromEntries([...stats].map(([k, v]) => [k, v]));
    return h('table', { class: 'grid' }, h('thead', null, h('tr', null, ['segment', 'voxels', 'volume (mL)', isCT ? 'mean HU' : 'mean', 'SD'].map((x) => h('th', null, x)))), h('tbody', null, rows));
  }

  // ------------------------------------------------------------------ versions: open, save, conflicts, review, export
  function versionLine(v: Version): string { return `${v.name} v${v.number} (${v.branch}) · ${v.author} · ${v.created_at}`; }
  async function refreshVersions(): Promise<void> {
    try { versions = (await api.seriesAnnotations(project, key)).versions; } catch (e) { toast(errorText(e), 'error'); }
    renderVersions();
  }
  function renderVersions(): void {
    const list = [...versions].sort((a, b) => b.id - a.id);
    replace(versionsPanel, h('h3', null, 'Versions'),
      list.length === 0 ? h('p', { class: 'muted small' }, 'No annotation of this series yet.') : null,
      h('ul', { class: 'items' }, list.map((v) => h('li', { class: 'version', dataset: { versionId: String(v.id), status: v.status, kind: v.kind } },
        h('div', null, h('span', { class: 'vname' }, versionLine(v)), ' ', statusChip(v.status)),
        v.comment ? h('div', { class: 'small comment' }, v.comment) : null,
        v.reviews.map((r) => h('div', { class: 'small review' }, `${r.reviewer} ${r.decision}ed`, r.comment ? `: ${r.comment}` : '')),
        h('div', { class: 'buttons' },
          h('button', { onclick: () => openVersion(v), dataset: { action: 'open' } }, 'Open'),
          mayExport && v.kind === 'mask' ? h('button', { onclick: () => exportVersion(v, 'seg'), dataset: { action: 'export-seg' } }, 'Export SEG') : null,
          mayExport && v.kind !== 'mask' ? h('button', { onclick: () => exportVersion(v, 'sr'), dataset: { action: 'export-sr' } }, 'Export SR') : null,
          mayExport && v.kind === 'mask' ? h('button', { onclick: () => exportVersion(v, 'nifti'), dataset: { action: 'export-nifti' } }, 'NIfTI') : null,
          mayExport && v.kind !== 'mask' ? h('button', { onclick: () => exportVersion(v, 'csv'), dataset: { action: 'export-csv' } }, 'CSV') : null,
          mayPush && (v.kind === 'mask' || v.kind === 'points' || v.kind === 'boxes') ? h('button', { onclick: () => pushVersion(v), dataset: { action: 'push' }, title: 'Send to the PACS (a mask: its SEG and SR)' }, 'Push to PACS') : null,
          v.status === 'draft' && v.author === me && mayEdit ? h('button', { onclick: () => submitVersion(v), dataset: { action: 'submit' } }, 'Submit') : null),
        v.status === 'submitted' && v.reviewed_in ? h('div', { class: 'small muted reviewed-in' },
          `AI result${v.reviewed_in.job != null ? ` of service job ${v.reviewed_in.job}` : ''}: reviewed in the review page, section AI results (or \`sobre review\`).`) :
          v.status === 'submitted' && mayReview && v.author !== me ? reviewBox(v) : null))));
  }
  function reviewBox(v: Version): HTMLElement {
    const comment = h('textarea', { name: 'review-comment', rows: 2, placeholder: 'Comment (needed to reject)', maxlength: 2000 });
    const decide = async (decision: 'accept' | 'reject') => {
      try {
        const got = await api.review(project, v.id, decision, comment.value);
        toast(`Version ${got.number} ${got.status}.`);
        await refreshVersions();
      } catch (e) { toast(errorText(e), 'error'); }
    };
    return h('div', { class: 'review-box' }, comment,
      h('button', { class: 'primary', dataset: { action: 'accept' }, onclick: () => decide('accept') }, 'Accept'),
      h('button', { dataset: { action: 'reject' }, onclick: () => decide('reject') }, 'Reject'));
  }

  async function openVersion(v: Version): Promise<void> {
    try {
      if (v.kind === 'mask') {
        if (maskDirty && !(await choose('Unsaved changes', 'Opening this version replaces the mask you have not saved.', [{ label: 'Open anyway', value: 'y', primary: true }]))) return;
        await loadMask(v);
      } else {
        const { content } = await api.content(project, v.id);
        if (v.kind === 'labels') setLabels(content);
        else if (v.kind === 'points') hydrateItems('points', content);
        else hydrateItems('boxes', content);
        current[v.name] = v;
      }
      toast(`Opened ${v.name} version ${v.number}.`);
    } catch (e) { toast(errorText(e), 'error'); }
  }
  async function loadMask(v: Version): Promise<void> {
    const res = await fetch(api.contentUrl(project, v.id), { credentials: 'same-origin' });
    if (!res.ok) throw new ApiError(res.status, await res.json().catch(() => ({ error: 'Error', status: res.status, what: res.statusText })));
    const bytes = new Uint8Array(await res.arrayBuffer());
    if (!ensureLabelmap()) return;
    if (bytes.length !== labelmap!.length) throw new Error(`the mask has ${bytes.length} voxels, the series ${labelmap!.length}`);
    labelmap!.set(bytes);
    maskChanged();
    current[v.name] = v;
    maskName = v.name;
    maskDirty = false;
    renderDirty();
    maskVersionInfo.textContent = `editing ${versionLine(v)} — ${v.status}`;
    hooks.maskVersion = v;
  }
  async function exportVersion(v: Version, format: 'seg' | 'sr' | 'nifti' | 'csv'): Promise<void> {
    try {
      const res = await fetch(api.exportUrl(project, v.id, format), { credentials: 'same-origin' });
      if (!res.ok) throw new ApiError(res.status, await res.json());
      const cd = res.headers.get('Content-Disposition') ?? '';
      const name = /filename="?([^";]+)"?/.exec(cd)?.[1] ?? `${v.name}-v${v.number}.${format === 'nifti' ? 'nii.gz' : format === 'csv' ? 'csv' : 'dcm'}`;
      download(await res.blob(), name.replace(/[^A-Za-z0-9._-]/g, '_'));
    } catch (e) { toast(errorText(e), 'error'); }
  }
  async function pushVersion(v: Version): Promise<void> {
    try {
      const got = await api.push(project, v.id, v.kind === 'mask' ? 'seg' : 'sr');
      toast(`Sent to ${String(got.pacs ?? 'the PACS')}: ${String(got.sop_instance_uid ?? '')}`);
      hooks.lastPush = got;
    } catch (e) { toast(errorText(e), 'error'); }
  }
  async function submitVersion(v: Version): Promise<void> {
    try { const got = await api.submit(project, v.id); toast(`Version ${got.number} submitted.`); if (current[v.name]?.id === v.id) current[v.name] = got; await refreshVersions(); } catch (e) { toast(errorText(e), 'error'); }
  }

  /** Save with the optimistic-concurrency rule: on 409 the user reloads the newer version or branches. */
  async function saveWithConflict(name: string, doSave: (newBranch: boolean) => Promise<Version>, reload: (head: Version) => Promise<void>): Promise<Version | null> {
    try {
      return await doSave(false);
    } catch (err) {
      if (!(err instanceof ApiError) || err.status !== 409 || err.body.error !== 'AnnotationConflict') throw err;
      const choice = await choose('Someone saved first', h('div', null,
        h('p', null, err.body.what),
        h('p', { class: 'muted small' }, 'Reload the newer version (your unsaved changes are dropped), or keep your work as a new branch.')),
      [{ label: 'Reload newer version', value: 'reload' }, { label: 'Save mine as a new branch', value: 'branch', primary: true }]);
      hooks.lastConflict = err.body;
      if (choice === 'branch') return doSave(true);
      if (choice === 'reload') {
        const heads = (await api.seriesAnnotations(project, key)).heads.filter((x) => x.name === name);
        const branch = current[name]?.branch ?? 'main';
        const head = heads.find((x) => x.branch === branch) ?? heads[0];
        if (head) await reload(await api.version(project, head.id));
      }
      return null;
    }
  }
  async function saveMask(statusWanted: 'draft' | 'submitted'): Promise<void> {
    if (!labelmap) { toast('Nothing drawn yet.', 'error'); return; }
    try {
      const parent = current[maskName]?.id ?? null;
      const got = await saveWithConflict(maskName,
        (nb) => api.saveMask(project, key, maskName, labelmap!, { parent, new_branch: nb, status: statusWanted, tool: activeTool || 'brush' }),
        (head) => loadMask(head));
      if (got) {
        current[maskName] = got;
        maskDirty = false; renderDirty();
        maskVersionInfo.textContent = `editing ${versionLine(got)} — ${got.status}`;
        hooks.maskVersion = got;
        toast(`Saved ${got.name} version ${got.number} (${got.status}${got.branch !== 'main' ? `, branch ${got.branch}` : ''}).`);
      }
      await refreshVersions();
    } catch (e) { toast(errorText(e), 'error'); }
  }
  async function saveItems(kind: 'points' | 'boxes'): Promise<void> {
    const name = kind === 'points' ? 'landmarks' : 'boxes';
    const anns = allAnnotations().filter((a) => a.metadata?.toolName === (kind === 'points' ? 'Landmark' : 'Box'));
    const content = kind === 'points'
      ? anns.map((a) => ({ name: landmarkNames.get(a.annotationUID) ?? pointName, position: Array.from(a.data.handles.points[0] as number[]) }))
      : anns.map((a) => ({ name: boxNames.get(a.annotationUID) ?? boxName, ...boxOf(a) }));
    try {
      const got = await saveWithConflict(name, (nb) => api.saveJson(project, key, name, kind, content, { parent: current[name]?.id ?? null, new_branch: nb }),
        async (head) => { const { content: c } = await api.content(project, head.id); hydrateItems(kind, c); current[name] = head; });
      if (got) { current[name] = got; toast(`Saved ${name} version ${got.number}.`); }
      await refreshVersions();
    } catch (e) { toast(errorText(e), 'error'); }
  }
  async function saveLabels(): Promise<void> {
    const content: Record<string, unknown> = {};
    for (const [k, read] of labelInputs) { const v = read(); if (v !== undefined) content[k] = v; }
    if (!Object.keys(content).length) { toast('Fill in at least one label.', 'error'); return; }
    try {
      const got = await saveWithConflict('labels', (nb) => api.saveJson(project, key, 'labels', 'labels', content, { parent: current.labels?.id ?? null, new_branch: nb }),
        async (head) => { const { content: c } = await api.content(project, head.id); setLabels(c); current.labels = head; });
      if (got) { current.labels = got; toast(`Saved labels version ${got.number}.`); }
      await refreshVersions();
    } catch (e) { toast(errorText(e), 'error'); }
  }
  function setLabels(content: Record<string, unknown>): void {
    for (const l of schema.labels) {
      const v = content?.[l.name];
      const el = labelsForm.querySelector(`[data-label="${CSS.escape(l.name)}"]`);
      if (!el) continue;
      if (l.kind === 'multilabel') el.querySelectorAll<HTMLInputElement>('input[type=checkbox]').forEach((c) => { c.checked = Array.isArray(v) && v.includes(c.value); });
      else if (l.kind === 'binary') el.querySelectorAll<HTMLInputElement>('input[type=radio]').forEach((c) => { c.checked = v !== undefined && String(Number(v)) === c.value; });
      else { const inp = el.querySelector<HTMLInputElement | HTMLSelectElement | HTMLTextAreaElement>('input, select, textarea'); if (inp) inp.value = v === undefined || v === null ? '' : String(v); }
    }
  }
  function hydrateItems(kind: 'points' | 'boxes', items: any[]): void {
    const toolName = kind === 'points' ? 'Landmark' : 'Box';
    for (const a of allAnnotations().filter((x) => x.metadata?.toolName === toolName)) csAnnotation.state.removeAnnotation(a.annotationUID);
    const vpId = mprIds[0];
    const inst = tg.getToolInstance(toolName);
    for (const it of items ?? []) {
      try {
        if (kind === 'points') {
          const ann: any = (ProbeTool as any).hydrate(vpId, [it.position], { toolInstance: inst });
          landmarkNames.set(ann.annotationUID, it.name);
        } else {
          const [a, b] = [it.min, it.max];
          const z = a[2];
          const ann: any = (RectangleROITool as any).hydrate(vpId, [[a[0], a[1], z], [b[0], a[1], z], [a[0], b[1], z], [b[0], b[1], z]], { toolInstance: inst });
          boxNames.set(ann.annotationUID, it.name);
        }
      } catch (e) { console.warn('could not show', kind, it, e); }
    }
    renderMeasurements();
    re.render();
  }

  renderVersions();
  const wanted = Number(params.get('version'));
  const preselect = wanted ? versions.find((v) => v.id === wanted) : undefined;
  if (preselect) await openVersion(preselect);
  else {
    // open my latest draft of each annotation, else the latest accepted one
    const byName = new Map<string, Version>();
    for (const v of [...versions].sort((a, b) => a.id - b.id)) {
      if ((v.author === me && v.status === 'draft') || v.status === 'accepted' || !byName.has(v.name)) byName.set(v.name, v);
    }
    for (const v of byName.values()) await openVersion(v);
  }

  // ------------------------------------------------------------------ overlays: a heat map from another series on the same grid
  void buildOverlayPanel();
  async function buildOverlayPanel(): Promise<void> {
    let candidates: SeriesRecord[] = [];
    try {
      if (detail.subject_id) {
        const subj = await api.subject(project, detail.subject_id);
        candidates = subj.studies.flatMap((s) => s.series).filter((r) => r.key !== key && Array.isArray(r.shape) &&
          r.shape.slice(0, 3).join(',') === g.dimensions.join(','));
      }
    } catch { /* no overlay candidates */ }
    const select = h('select', { name: 'overlay' }, h('option', { value: '' }, candidates.length ? '— none —' : 'no series on this grid'),
      candidates.map((r) => h('option', { value: r.key }, `${r.modality ?? ''} ${r.series_description ?? r.key}`)));
    const opacity = h('input', { type: 'range', min: 0, max: 1, step: 0.05, value: '0.4', name: 'overlay-opacity' });
    const cmap = h('select', { name: 'overlay-colormap' }, ['hsv', 'Black-Body Radiation', 'Cool to Warm', 'jet'].map((c) => h('option', { value: c }, c)));
    let overlayId = '';
    const apply = () => {
      if (!overlayId) return;
      for (const v of mprIds) (re.getViewport(v) as any).setProperties({ colormap: { name: cmap.value, opacity: Number(opacity.value) } }, overlayId);
      re.renderViewports(mprIds);
    };
    select.addEventListener('change', async () => {
      try {
        for (const v of mprIds) if (overlayId) (re.getViewport(v) as any).removeVolumeActors?.([overlayId]);
        if (overlayId) cache.removeVolumeLoadObject(overlayId);
        overlayId = '';
        if (!select.value || is2d) { re.renderViewports(mprIds); return; }
        const od = await api.seriesDetail(project, select.value);
        const data = await streamVolume(api.volumeUrl(project, select.value), od.volume);
        overlayId = `sobre-${id}-ov-${Date.now()}`;
        volumeLoader.createLocalVolume(overlayId, { scalarData: data as any, dimensions: od.volume.dimensions, spacing: od.volume.spacing, origin: od.volume.origin, direction: od.volume.direction as any, metadata: { ...meta, Modality: od.modality ?? 'OT' } as any } as any);
        for (const v of mprIds) await (re.getViewport(v) as any).addVolumes([{ volumeId: overlayId }]);
        const ow: [number, number] = od.volume.window ? [od.volume.window.center, od.volume.window.width] : minMaxWindow(data);
        for (const v of mprIds) (re.getViewport(v) as any).setProperties({ voiRange: toRange(ow) }, overlayId);
        apply();
      } catch (e) { toast(errorText(e), 'error'); }
    });
    opacity.addEventListener('input', apply); cmap.addEventListener('change', apply);
    replace(overlayPanel, h('h3', null, 'Overlay'), h('label', { class: 'inline' }, 'Heat map ', select), h('label', { class: 'inline' }, 'Colours ', cmap),
      h('label', { class: 'inline' }, 'Opacity ', opacity));
  }

  hooks.ready = true;
  hooks.setTool = setTool;
  hooks.setWindow = setWindow;
  hooks.sliceIndex = (v: string) => (re.getViewport(v) as any)?.getSliceIndex?.();
  hooks.maskCount = () => labelmap ? labelmap.reduce((n, x) => n + (x ? 1 : 0), 0) : 0;
  hooks.voi = (v: string) => (re.getViewport(v) as any)?.getProperties?.().voiRange;
  hooks.engine = re;
  // the volume's texture as Cornerstone3D allocated it (bytes per voxel: 2 with half floats or norm16, 4 with floats)
  hooks.texture = () => {
    const t: any = is2d ? null : (cache.getVolume(volumeId) as any)?.vtkOpenGLTexture;
    if (!t) return null;
    const bytes = t.getAllocatedGPUMemoryInBytes();
    return { bytes, bytesPerVoxel: bytes / (g.dimensions[0] * g.dimensions[1] * g.dimensions[2] * g.components), halfFloat: !!t.useHalfFloat() };
  };
  // for the browser tests: where a voxel is on the page, what a canvas shows there, which slices hold mask
  hooks.pagePoint = (v: string, ijk: number[]) => {
    const vp: any = re.getViewport(v);
    const w = [0, 1, 2].map((a) => g.origin[a] + [0, 1, 2].reduce((acc, b) => acc + g.direction[3 * b + a] * ijk[b] * g.spacing[b], 0));
    const [x, y] = vp.worldToCanvas(w);
    const r = vp.canvas.getBoundingClientRect();
    return [r.left + x, r.top + y];
  };
  hooks.pixel = (v: string, clientX: number, clientY: number) => {
    const c: HTMLCanvasElement = (re.getViewport(v) as any).canvas;
    const r = c.getBoundingClientRect();
    const x = Math.round((clientX - r.left) * c.width / r.width), y = Math.round((clientY - r.top) * c.height / r.height);
    return Array.from(c.getContext('2d')!.getImageData(x, y, 1, 1).data);
  };
  hooks.canvasStats = (v: string) => {
    const c: HTMLCanvasElement = (re.getViewport(v) as any).canvas;
    const d = c.getContext('2d')!.getImageData(0, 0, c.width, c.height).data;
    let s = 0, s2 = 0, n = 0;
    for (let p = 0; p < d.length; p += 4) { const y = (d[p] + d[p + 1] + d[p + 2]) / 3; s += y; s2 += y * y; n++; }
    const mean = s / n;
    return { mean, sd: Math.sqrt(Math.max(0, s2 / n - mean * mean)), width: c.width, height: c.height };
  };
  hooks.maskSlices = () => {
    if (!labelmap) return [];
    const per = g.dimensions[0] * g.dimensions[1];
    const out: number[] = [];
    for (let k = 0; k < g.dimensions[2]; k++) { const sl = labelmap.subarray(k * per, (k + 1) * per); if (sl.some((x) => x)) out.push(k); }
    return out;
  };
  return () => { for (const d of disposers.reverse()) { try { d(); } catch (e) { console.warn(e); } } };
}

// ---------------------------------------------------------------------------------------------- helpers
/** Plane metadata of the slices of our local volumes (`<volumeId>_slice_<k>`), for the tools that look it up. */
function planeMetadata(prefix: string, g: Geometry, meta: Record<string, any>) {
  const d = g.direction;
  return (type: string, imageId: string) => {
    if (typeof imageId !== 'string' || !imageId.startsWith(prefix)) return undefined;
    const k = Number(/_slice_(\d+)$/.exec(imageId)?.[1] ?? 0);
    if (type === 'imagePlaneModule') {
      const pos = [0, 1, 2].map((a) => g.origin[a] + k * g.spacing[2] * d[6 + a]);
      return {
        frameOfReferenceUID: meta.FrameOfReferenceUID, rows: g.dimensions[1], columns: g.dimensions[0],
        imageOrientationPatient: d.slice(0, 6), rowCosines: d.slice(0, 3), columnCosines: d.slice(3, 6),
        imagePositionPatient: pos, pixelSpacing: [g.spacing[1], g.spacing[0]], rowPixelSpacing: g.spacing[1],
        columnPixelSpacing: g.spacing[0], sliceThickness: g.spacing[2], sliceLocation: pos[2],
      };
    }
    if (type === 'generalSeriesModule') return { modality: meta.Modality, seriesInstanceUID: prefix };
    if (type === 'imagePixelModule') return {
      bitsAllocated: meta.BitsAllocated, bitsStored: meta.BitsStored, highBit: meta.HighBit, pixelRepresentation: meta.PixelRepresentation,
      samplesPerPixel: meta.SamplesPerPixel, photometricInterpretation: meta.PhotometricInterpretation,
    };
    if (type === 'voiLutModule') return { windowCenter: [meta.voiLut[0].windowCenter], windowWidth: [meta.voiLut[0].windowWidth] };
    return undefined;
  };
}

function minMaxWindow(d: ArrayLike<number>): [number, number] {
  let lo = Infinity, hi = -Infinity;
  for (let n = 0; n < d.length; n += 7) { const x = d[n]; if (x < lo) lo = x; if (x > hi) hi = x; }
  return hi > lo ? [(lo + hi) / 2, hi - lo] : [lo, 1];
}
function round(x: number): number { return Math.round(x * 10) / 10; }
function toRange([c, w]: [number, number]): { lower: number; upper: number } { return { lower: c - w / 2, upper: c + w / 2 }; }
function fmtPoint(p: number[] | undefined): string { return p ? `(${p.map((x) => x.toFixed(1)).join(', ')}) mm` : '—'; }

function boxOf(a: any): { min: number[]; max: number[] } {
  const pts: number[][] = a.data?.handles?.points ?? [];
  const min = [0, 1, 2].map((d) => Math.min(...pts.map((p) => p[d])));
  const max = [0, 1, 2].map((d) => Math.max(...pts.map((p) => p[d])));
  return { min, max };
}

/** Block average by `f` along each axis (the 3D view's copy in software WebGL). */
export function downsample(vox: Voxels, dims: number[], f: number): { data: Voxels; dims: [number, number, number] } {
  const [I, J, K] = dims;
  const [i2, j2, k2] = [Math.floor(I / f), Math.floor(J / f), Math.floor(K / f)].map((x) => Math.max(1, x));
  const out = new (vox.constructor as any)(i2 * j2 * k2) as Voxels;
  const acc = new Float64Array(i2);
  const n = f * f * f;
  for (let k = 0; k < k2; k++) for (let j = 0; j < j2; j++) {
    acc.fill(0);
    for (let dk = 0; dk < f; dk++) for (let dj = 0; dj < f; dj++) {
      const row = (k * f + dk) * I * J + (j * f + dj) * I;
      for (let i = 0; i < i2; i++) { let s = 0; const b = row + i * f; for (let di = 0; di < f; di++) s += vox[b + di]; acc[i] += s; }
    }
    const o = (k * j2 + j) * i2;
    for (let i = 0; i < i2; i++) out[o + i] = acc[i] / n;
  }
  return { data: out, dims: [i2, j2, k2] };
}

/** LPS mm → nearest voxel index (i, j, k), or null outside the grid. */
export function worldToIndex(g: Geometry, p: number[]): [number, number, number] | null {
  const d = g.direction;
  const rel = [p[0] - g.origin[0], p[1] - g.origin[1], p[2] - g.origin[2]];
  const ijk = [0, 1, 2].map((a) => Math.round((d[3 * a] * rel[0] + d[3 * a + 1] * rel[1] + d[3 * a + 2] * rel[2]) / g.spacing[a])) as [number, number, number];
  return ijk.every((x, a) => x >= 0 && x < g.dimensions[a]) ? ijk : null;
}

/** Flood fill (6-connected) of voxels in [lo, hi] from `seed`; returns [index, old value, ...] of changed voxels. */
export function fill3d(vox: ArrayLike<number>, lm: Uint8Array, dims: number[], seed: number[], lo: number, hi: number, value: number): number[] {
  const [I, J, K] = dims;
  const start = seed[0] + I * (seed[1] + J * seed[2]);
  const inRange = (n: number) => vox[n] >= lo && vox[n] <= hi;
  if (!inRange(start)) return [];
  const seen = new Uint8Array(I * J * K);
  const stack = new Int32Array(1 << 20);
  let stackBuf = stack;
  let top = 0;
  const changed: number[] = [];
  stackBuf[top++] = start; seen[start] = 1;
  while (top > 0) {
    const n = stackBuf[--top];
    if (lm[n] !== value) { changed.push(n, lm[n]); lm[n] = value; }
    const i = n % I, j = ((n / I) | 0) % J, k = (n / (I * J)) | 0;
    const nb = [i > 0 ? n - 1 : -1, i < I - 1 ? n + 1 : -1, j > 0 ? n - I : -1, j < J - 1 ? n + I : -1, k > 0 ? n - I * J : -1, k < K - 1 ? n + I * J : -1];
    for (const m of nb) {
      if (m < 0 || seen[m] || !inRange(m)) continue;
      seen[m] = 1;
      if (top >= stackBuf.length) { const bigger = new Int32Array(stackBuf.length * 2); bigger.set(stackBuf); stackBuf = bigger; }
      stackBuf[top++] = m;
    }
  }
  return changed;
}

/** Per segment value: voxel count, mean and SD of the image under it. */
export function segmentStats(vox: ArrayLike<number>, lm: Uint8Array, components = 1): Map<number, { n: number; mean: number; sd: number }> {
  const n = new Float64Array(256), s = new Float64Array(256), s2 = new Float64Array(256);
  for (let p = 0; p < lm.length; p++) {
    const v = lm[p];
    if (!v) continue;
    const x = components === 1 ? vox[p] : vox[3 * p];
    n[v]++; s[v] += x; s2[v] += x * x;
  }
  const out = new Map<number, { n: number; mean: number; sd: number }>();
  for (let v = 1; v < 256; v++) {
    if (!n[v]) continue;
    const mean = s[v] / n[v];
    out.set(v, { n: n[v], mean, sd: Math.sqrt(Math.max(0, s2[v] / n[v] - mean * mean)) });
  }
  return out;
}

function labelField(l: LabelDef, inputs: Map<string, () => unknown>): HTMLElement {
  const title = h('span', { class: 'label-name' }, l.name, l.unit ? ` [${l.unit}]` : '');
  if (l.kind === 'binary') {
    const yes = h('input', { type: 'radio', name: `label-${l.name}`, value: '1' });
    const no = h('input', { type: 'radio', name: `label-${l.name}`, value: '0' });
    inputs.set(l.name, () => (yes.checked ? 1 : no.checked ? 0 : undefined));
    return h('div', { class: 'label-field', dataset: { label: l.name } }, title, h('label', { class: 'inline' }, yes, 'yes'), h('label', { class: 'inline' }, no, 'no'));
  }
  if (l.kind === 'multiclass') {
    const sel = h('select', { name: `label-${l.name}` }, h('option', { value: '' }, '—'), (l.classes ?? []).map((c) => h('option', { value: c }, c)));
    inputs.set(l.name, () => sel.value || undefined);
    return h('div', { class: 'label-field', dataset: { label: l.name } }, title, sel);
  }
  if (l.kind === 'multilabel') {
    const boxes = (l.classes ?? []).map((c) => h('input', { type: 'checkbox', value: c }));
    inputs.set(l.name, () => { const v = boxes.filter((b) => b.checked).map((b) => b.value); return v.length ? v : undefined; });
    return h('div', { class: 'label-field', dataset: { label: l.name } }, title, boxes.map((b) => h('label', { class: 'inline' }, b, b.value)));
  }
  if (l.kind === 'numeric') {
    const inp = h('input', { type: 'number', step: 'any', name: `label-${l.name}`, min: l.minimum ?? undefined, max: l.maximum ?? undefined, class: 'num' });
    inputs.set(l.name, () => (inp.value === '' ? undefined : Number(inp.value)));
    return h('div', { class: 'label-field', dataset: { label: l.name } }, title, inp);
  }
  const ta = h('textarea', { name: `label-${l.name}`, rows: 2, maxlength: 2000 });
  inputs.set(l.name, () => (ta.value === '' ? undefined : ta.value));
  return h('div', { class: 'label-field', dataset: { label: l.name } }, title, ta);
}

export type { Types };
