/**
 * Voxels from the server (docs/workstation.md, "Voxels"): one raw slice for a fast first image, then
 * the whole volume streamed straight into the one typed array the viewer keeps (no second copy:
 * chunks are written into place as they arrive, and Cornerstone3D's slices are views of that array).
 */
import { request, type Geometry } from '../api';

export type Voxels = Uint8Array | Int16Array | Uint16Array | Float32Array;

export function arrayType(dtype: Geometry['dtype']) {
  switch (dtype) {
    case 'uint8': return Uint8Array;
    case 'int16': return Int16Array;
    case 'uint16': return Uint16Array;
    case 'float32': return Float32Array;
    default: throw new Error(`unsupported voxel type ${dtype}`);
  }
}

/** The server's window (`X-Sobre-Window: centre,width`: the DICOM window, else the 0.5–99.5 percentiles). */
export function windowOf(res: Response): [number, number] | null {
  const parts = (res.headers.get('X-Sobre-Window') ?? '').split(',').map(Number);
  return parts.length === 2 && parts.every(Number.isFinite) && parts[1] > 0 ? [parts[0], parts[1]] : null;
}

export async function fetchSlice(url: string, dtype: Geometry['dtype'], signal?: AbortSignal): Promise<{ data: Voxels; width: number; height: number; window: [number, number] | null }> {
  const res = await request('GET', url, undefined, { signal });
  const buf = await res.arrayBuffer();
  const width = Number(res.headers.get('X-Sobre-Width'));
  const height = Number(res.headers.get('X-Sobre-Height'));
  const T = arrayType(dtype);
  return { data: new T(buf), width, height, window: windowOf(res) };
}

/** Stream `url` into a new array of `geometry.n_bytes`; `progress(fraction)` as bytes arrive. */
export async function streamVolume(url: string, geometry: Geometry, progress?: (f: number) => void, signal?: AbortSignal,
  onHeaders?: (res: Response) => void): Promise<Voxels> {
  const res = await request('GET', url, undefined, { signal });
  onHeaders?.(res);
  const total = Number(res.headers.get('Content-Length')) || geometry.n_bytes;
  if (total !== geometry.n_bytes) throw new Error(`the volume has ${total} bytes, its geometry says ${geometry.n_bytes}`);
  let buffer = new ArrayBuffer(total);
  let pos = 0;
  let last = 0;
  const tick = () => { if (progress && pos - last > total / 50) { last = pos; progress(pos / total); } };
  const body = res.body!;
  let byob: ReadableStreamBYOBReader | null = null;
  try { byob = body.getReader({ mode: 'byob' }); } catch { byob = null; }
  if (byob) {
    // bytes go straight into the volume's buffer (transferred to the stream and back on each read, no chunk arrays)
    while (pos < total) {
      const { done, value } = await byob.read(new Uint8Array(buffer, pos, total - pos));
      if (!value) break;
      buffer = value.buffer as ArrayBuffer;
      if (done) break;
      pos += value.byteLength;
      tick();
    }
    if (pos === total) {
      // the stream must end here: one more byte would be more than the volume holds
      const { done, value } = await byob.read(new Uint8Array(1));
      if (!done || (value && value.byteLength)) throw new Error('the server sent more bytes than the volume holds');
    }
  } else {
    const bytes = new Uint8Array(buffer);
    const reader = body.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      if (pos + value.byteLength > total) throw new Error('the server sent more bytes than the volume holds');
      bytes.set(value, pos);
      pos += value.byteLength;
      tick();
    }
  }
  if (pos !== total) throw new Error(`the volume stream ended after ${pos} of ${total} bytes`);
  progress?.(1);
  const T = arrayType(geometry.dtype);
  return new T(buffer);
}

/** Draw one plane (height × width, width fastest) windowed into a canvas, scaled to fit with the pixel aspect. */
export function drawPlane(canvas: HTMLCanvasElement, plane: Voxels, width: number, height: number, center: number, windowWidth: number,
  aspect = 1, components = 1): void {
  const img = new ImageData(width, height);
  const out = img.data;
  const lo = center - windowWidth / 2;
  const scale = 255 / Math.max(windowWidth, 1e-6);
  for (let p = 0, q = 0; p < width * height; p++, q += 4) {
    if (components === 3) {
      out[q] = plane[3 * p]; out[q + 1] = plane[3 * p + 1]; out[q + 2] = plane[3 * p + 2];
    } else {
      const v = (plane[p] - lo) * scale;
      const g = v < 0 ? 0 : v > 255 ? 255 : v;
      out[q] = out[q + 1] = out[q + 2] = g;
    }
    out[q + 3] = 255;
  }
  const off = new OffscreenCanvas(width, height);
  off.getContext('2d')!.putImageData(img, 0, 0);
  const rect = canvas.getBoundingClientRect();
  canvas.width = Math.max(1, Math.round(rect.width));
  canvas.height = Math.max(1, Math.round(rect.height));
  const ctx = canvas.getContext('2d')!;
  ctx.fillStyle = '#000';
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  const h = height * aspect;
  const f = Math.min(canvas.width / width, canvas.height / h);
  ctx.imageSmoothingEnabled = true;
  ctx.drawImage(off, (canvas.width - width * f) / 2, (canvas.height - h * f) / 2, width * f, h * f);
}
