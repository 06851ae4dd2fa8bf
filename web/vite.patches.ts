/**
 * One build-time patch of Cornerstone3D (5.0.13), applied by both Vite configs.
 *
 * Cornerstone3D uploads 16-bit volumes as 16-bit normalised textures when the WebGL context offers
 * EXT_texture_norm16, and otherwise as 32-bit floats: twice the volume's bytes on the GPU side
 * (in software WebGL, in the browser's own memory). Its mappers switch vtk.js's half-float path off.
 * The patch lets a page ask for half-float textures instead (2 bytes per voxel) when norm16 is absent,
 * by setting `globalThis.__sobreHalfFloatTextures = true` before any volume is rendered.
 * Display only: integers up to 2048 are exact, 2048..4096 step 2 (CT HU above +2048 round to even
 * values on screen); measurements and thresholds read the original voxels. See docs/viewer.md.
 */
import type { Plugin } from 'vite';

const TARGET = /@cornerstonejs[\\/]core[\\/]dist[\\/]esm[\\/]RenderingEngine[\\/]vtkClasses[\\/]vtkStreamingOpenGLTexture\.js$/;
const ANCHOR = 'publicAPI.getVolumeId = () => model.volumeId;';
const PATCH = `${ANCHOR}
    const sobreSuperUseHalfFloat = publicAPI.useHalfFloat;
    publicAPI.useHalfFloat = () => (globalThis.__sobreHalfFloatTextures === true && !model.oglNorm16Ext) || sobreSuperUseHalfFloat();`;

export function halfFloatTextures(): Plugin {
  let applied = false;
  return {
    name: 'sobre-half-float-textures',
    enforce: 'pre',
    transform(code, id) {
      if (!TARGET.test(id.split('?')[0])) return null;
      if (!code.includes(ANCHOR)) this.error(`sobre patch: anchor not found in ${id} (Cornerstone3D version changed?)`);
      applied = true;
      return { code: code.replace(ANCHOR, PATCH), map: null };
    },
    buildEnd(err) {
      if (!err && !applied && this.meta.watchMode === false) {
        this.warn('sobre patch: vtkStreamingOpenGLTexture.js was not part of the build');
      }
    },
  };
}
