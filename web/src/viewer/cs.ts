/** Cornerstone3D set-up, once per page: rendering, tools, and Sobre's own 3D fill tool. */
import { init as csInit, getRenderingEngine } from '@cornerstonejs/core';
import {
  init as toolsInit, addTool, BaseTool, WindowLevelTool, PanTool, ZoomTool, StackScrollTool, CrosshairsTool,
  LengthTool, EllipticalROITool, ProbeTool, RectangleROITool, BrushTool, PaintFillTool, TrackballRotateTool,
} from '@cornerstonejs/tools';

let ready: Promise<void> | null = null;

/** Slices uploaded to the volume's texture per render (web/vite.patches.ts): a render per batch bounds the GPU side's staging. */
export const TEXTURE_BATCH = 32;
/** Slices per texSubImage3D call when filling a 16-bit volume's texture (web/vite.patches.ts). */
export const TEXTURE_CHUNK = 16;

/**
 * Without EXT_texture_norm16 Cornerstone3D would upload 16-bit volumes as 32-bit float textures (twice
 * the volume again); the build patch (web/vite.patches.ts) lets us ask for half floats instead.
 */
export function initCornerstone(): Promise<void> {
  ready ??= (async () => {
    (globalThis as any).__sobreHalfFloatTextures = true;
    // a page may set its own before (benchmarks); web/vite.patches.ts says what they do
    (globalThis as any).__sobreTextureBatch ??= TEXTURE_BATCH;
    (globalThis as any).__sobreTextureChunk ??= TEXTURE_CHUNK;
    (globalThis as any).__sobreBatchedVolumes ??= new Set<string>();
    // one WebGL context: every viewport of the page renders in it (Cornerstone3D's default pool has 7, each
    // with its own buffers in the GPU process; the MPR and 3D viewports already share context 0)
    await csInit({ rendering: { webGlContextCount: 1 } } as any);
    toolsInit();
    for (const T of [WindowLevelTool, PanTool, ZoomTool, StackScrollTool, CrosshairsTool, LengthTool, EllipticalROITool,
      ProbeTool, RectangleROITool, BrushTool, PaintFillTool, TrackballRotateTool, Fill3DTool]) addTool(T as any);
  })();
  return ready;
}

export interface FillRequest { world: [number, number, number]; viewportId: string }

/**
 * Click to fill, in 3D, the connected region of voxels whose value lies in the threshold range
 * (6-connected, from the clicked voxel). The page does the work (`configuration.onFill`).
 */
export class Fill3DTool extends (BaseTool as any) {
  static toolName = 'Fill3D';
  constructor(toolProps = {}, defaultToolProps = { supportedInteractionTypes: ['Mouse'], configuration: { onFill: null } }) {
    super(toolProps, defaultToolProps);
  }
  preMouseDownCallback = (evt: any): boolean => {
    const { currentPoints, viewportId } = evt.detail;
    const fn = (this as any).configuration?.onFill;
    if (typeof fn === 'function') fn({ world: currentPoints.world, viewportId });
    return true;
  };
}

let software: boolean | null = null;
/** True in a software WebGL (SwiftShader, llvmpipe): the 3D rendering then trades detail for time. */
export function softwareWebGL(): boolean {
  if (software === null) {
    try {
      const gl = document.createElement('canvas').getContext('webgl2');
      const ext = gl?.getExtension('WEBGL_debug_renderer_info');
      const name = String(ext ? gl!.getParameter(ext.UNMASKED_RENDERER_WEBGL) : gl?.getParameter(gl.RENDERER) ?? '');
      software = /swiftshader|llvmpipe|software/i.test(name);
      gl?.getExtension('WEBGL_lose_context')?.loseContext();
    } catch { software = true; }
  }
  return software;
}

export function destroyEngine(id: string): void {
  try { getRenderingEngine(id)?.destroy(); } catch (e) { console.warn(e); }
}
