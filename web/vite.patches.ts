/**
 * One build-time patch of Cornerstone3D (5.0.13)'s volume texture (vtkStreamingOpenGLTexture.js), applied
 * by both Vite configs; each part is switched on by a global that web/src/viewer/cs.ts sets.
 *
 * Cornerstone3D uploads 16-bit volumes as 16-bit normalised textures when the WebGL context offers
 * EXT_texture_norm16, and otherwise as 32-bit floats: twice the volume's bytes on the GPU side
 * (in software WebGL, in the browser's own memory). Its mappers switch vtk.js's half-float path off.
 * The patch lets a page ask for half-float textures instead (2 bytes per voxel) when norm16 is absent,
 * by setting `globalThis.__sobreHalfFloatTextures = true` before any volume is rendered.
 * Display only: integers up to 2048 are exact, 2048..4096 step 2 (CT HU above +2048 round to even
 * values on screen); measurements and thresholds read the original voxels. See docs/workstation.md.
 * The conversion to half floats goes through a table and reused buffers, and the texture can be filled
 * in chunks and batches (below).
 */
import type { Plugin } from 'vite';

const TARGET = /@cornerstonejs[\\/]core[\\/]dist[\\/]esm[\\/]RenderingEngine[\\/]vtkClasses[\\/]vtkStreamingOpenGLTexture\.js$/;
const ANCHOR = 'publicAPI.getVolumeId = () => model.volumeId;';
const PATCH = `${ANCHOR}
    const sobreSuperUseHalfFloat = publicAPI.useHalfFloat;
    publicAPI.useHalfFloat = () => (globalThis.__sobreHalfFloatTextures === true && !model.oglNorm16Ext) || sobreSuperUseHalfFloat();
    const sobreSuperUpdateArray = publicAPI.updateArrayDataTypeForGL;
    publicAPI.updateArrayDataTypeForGL = (dataType, data, depth = false, imageExtents = []) => {
      const src = data && data.length === 1 ? data[0] : null;
      if (globalThis.__sobreHalfFloatTextures === true && !depth && !imageExtents.length && src
        && (src instanceof Int16Array || src instanceof Uint16Array) && model.openGLDataType === model.context.HALF_FLOAT
        && src.length === model.width * model.height * model.components) {
        const lut = sobreHalfLut();
        const signed = src instanceof Int16Array ? 1 : 0;
        if (!model.sobreHalfSlice || model.sobreHalfSlice.length !== src.length) model.sobreHalfSlice = new Uint16Array(src.length);
        const out = model.sobreHalfSlice;
        for (let i = 0; i < src.length; i++) out[i] = lut[(src[i] & 0xffff) | (signed << 16)];
        return [out];
      }
      return sobreSuperUpdateArray(dataType, data, depth, imageExtents);
    };`;

/**
 * Two changes to the loop that fills a volume's texture from its slices:
 * - `globalThis.__sobreTextureChunk` (n > 1): runs of up to n 16-bit slices are converted to half floats
 *   into one reused buffer and sent in one texSubImage3D call instead of one call per slice.
 * - `globalThis.__sobreTextureBatch` (n > 0), for the volumes in `globalThis.__sobreBatchedVolumes` only:
 *   at most n slices per texture update; the rest stay marked and the texture is marked modified, so
 *   that the next render uploads the next batch (the page renders until none is left). Under ANGLE the
 *   uploaded slices wait in staging buffers until a draw uses the texture: uploading the whole volume
 *   before the first draw held its bytes a second time in the GPU process.
 */
const LOOP = `for (let i = 0; i < model.updatedFrames.length; i++) {
            if (model.updatedFrames[i]) {`;
const BATCHED_LOOP = `const sobreBatch = globalThis.__sobreTextureBatch > 0 && globalThis.__sobreBatchedVolumes?.has?.(model.volumeId)
          ? globalThis.__sobreTextureBatch : Infinity;
        let sobreCount = 0;
        const sobreChunk = globalThis.__sobreTextureChunk > 1 ? globalThis.__sobreTextureChunk : 0;
        if (sobreChunk && model.openGLDataType === model.context.HALF_FLOAT && model.components === 1) {
          const sliceLen = model.width * model.height;
          const lut = sobreHalfLut();
          for (let i = 0; i < model.updatedFrames.length && sobreCount < sobreBatch;) {
            const run = [];
            while (i + run.length < model.updatedFrames.length && run.length < sobreChunk && sobreCount + run.length < sobreBatch
              && model.updatedFrames[i + run.length]) {
              const image = cache.getImage(imageIds[i + run.length]);
              const d = image && image.voxelManager.getScalarData();
              if (!d || d.length !== sliceLen || !(d instanceof Int16Array || d instanceof Uint16Array) || volume.dataType !== d.constructor.name) break;
              run.push(d);
            }
            if (!run.length) { i++; continue; }
            if (!model.sobreHalfChunk || model.sobreHalfChunk.length < sobreChunk * sliceLen) model.sobreHalfChunk = new Uint16Array(sobreChunk * sliceLen);
            const out = model.sobreHalfChunk;
            for (let r = 0; r < run.length; r++) {
              const src = run[r];
              const signed = src instanceof Int16Array ? 65536 : 0;
              const o = r * sliceLen;
              for (let p = 0; p < sliceLen; p++) out[o + p] = lut[(src[p] & 0xffff) + signed];
            }
            publicAPI.bind();
            model.context.texSubImage3D(model.target, 0, 0, 0, i, model.width, model.height, run.length, model.format, model.openGLDataType,
              out.subarray(0, run.length * sliceLen));
            publicAPI.deactivate();
            for (let r = 0; r < run.length; r++) model.updatedFrames[i + r] = null;
            sobreCount += run.length;
            i += run.length;
          }
          if (!model.updatedFrames.some((f) => f)) model.sobreHalfChunk = null;
        }
        for (let i = 0; i < model.updatedFrames.length; i++) {
            if (model.updatedFrames[i]) {
                if (sobreCount++ >= sobreBatch) { superModified(); break; }`;

/**
 * 16-bit integers to half floats through a table made with vtk.js's own conversion (same rounding), one
 * slice buffer reused for every slice: without it each slice's upload allocated a new array (the whole
 * volume's bytes again, as garbage, while the texture is filled). texSubImage3D copies the data before
 * it returns, so reusing the buffer is safe.
 */
const HEADER = `import sobreHalfFloat from '@kitware/vtk.js/Common/Core/HalfFloat';
let sobreHalfTable = null;
function sobreHalfLut() {
  if (!sobreHalfTable) {
    sobreHalfTable = new Uint16Array(2 * 65536);
    for (let v = 0; v < 65536; v++) {
      sobreHalfTable[v] = sobreHalfFloat.toHalf(v);
      sobreHalfTable[65536 + v] = sobreHalfFloat.toHalf(v >= 32768 ? v - 65536 : v);
    }
  }
  return sobreHalfTable;
}
`;

export function halfFloatTextures(): Plugin {
  let applied = false;
  return {
    name: 'sobre-half-float-textures',
    enforce: 'pre',
    transform(code, id) {
      if (!TARGET.test(id.split('?')[0])) return null;
      for (const a of [ANCHOR, LOOP]) {
        if (code.split(a).length !== 2) this.error(`sobre patch: anchor not found once in ${id} (Cornerstone3D version changed?): ${a}`);
      }
      applied = true;
      return { code: HEADER + code.replace(ANCHOR, PATCH).replace(LOOP, BATCHED_LOOP), map: null };
    },
    buildEnd(err) {
      if (!err && !applied && this.meta.watchMode === false) {
        this.warn('sobre patch: vtkStreamingOpenGLTexture.js was not part of the build');
      }
    },
  };
}
