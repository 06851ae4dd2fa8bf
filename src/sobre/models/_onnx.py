"""CPU efficiency: the package's networks in ONNX Runtime, checked against PyTorch and measured, fp32 and int8.

:func:`export_onnx` writes one ONNX file per member network (``onnx/member<i>.onnx``, batch axis
dynamic), runs ONNX Runtime and PyTorch eager (fp32) on the same training-like inputs and refuses the
export when an output differs by more than ``atol + rtol·|torch|``. Then, unless told not to, it
quantizes each network to int8 (ONNX Runtime static quantization: QDQ, per-channel int8 weights,
uint8 activations, MinMax calibration on a few training images) and measures, on the same machine
and input, the latency of PyTorch, ONNX Runtime fp32 and int8, and the change of accuracy on the
run's held-out test subjects. int8 is *chosen* only when it is measurably faster and its held-out
accuracy holds (thresholds in :class:`OnnxOptions`): on small networks it is often slower. Everything
measured goes into ``onnx/onnx.json`` and the card.

:class:`OnnxModel` is a :class:`~sobre.learn.TrainedModel` whose networks run in ONNX Runtime: the
same ``predict`` (same preprocessing, batching, covariates, sliding windows), ``prepare``, ``task``
and ``provenance``.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import platform
import statistics
import time
import warnings
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from sobre.base import Config
from sobre.errors import InputError, SobreError

__all__ = ["OnnxOptions", "OnnxModel", "export_onnx", "ONNX_FORMAT", "machine_info"]

log = logging.getLogger("sobre.models")

ONNX_FORMAT = "sobre.onnx-export/1"


class OnnxOptions(Config):
    """How :func:`export_onnx` exports, checks, quantizes and decides."""

    docs = "docs/models.md (ONNX)"

    int8: Literal["auto", "never"] = Field("auto", description="auto: quantize, measure, keep int8 only if it wins; "
                                           "never: fp32 ONNX only")
    calibration: str | None = Field(None, description="dataset version of this workspace for calibration inputs "
                                    "(default: the training split of the model's own dataset version, when present)")
    n_calibration: int = Field(8, ge=1, le=512, description="training-like images for the check and calibration")
    max_heldout: int = Field(64, ge=0, le=100000, description="held-out test images predicted three times")
    atol: float = Field(1e-4, gt=0, description="ONNX Runtime fp32 vs PyTorch eager: absolute tolerance")
    rtol: float = Field(1e-3, ge=0, description="... plus this times |PyTorch output|")
    opset: int = Field(17, ge=13, le=21)
    repeats: int = Field(20, ge=3, le=10000, description="timed forward passes per runtime (median kept)")
    int8_min_speedup: float = Field(1.1, ge=1.0, description="int8 must be at least this many times faster")
    int8_max_metric_drop: float = Field(0.01, ge=0, description="largest held-out AUC/accuracy/Dice drop allowed")
    int8_min_agreement: float = Field(0.98, ge=0, le=1, description="smallest held-out agreement with fp32 "
                                      "(labels, or voxels for segmentation)")
    threads: int | None = Field(None, ge=1, description="threads for both runtimes (default: torch's)")
    keep_int8: bool = Field(False, description="keep the int8 files even when not chosen (benchmarks); "
                            "runtime='onnx' still follows the choice")


# ------------------------------------------------------------------------------- ORT networks
def _session(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE":  # sleep like torch's OpenMP threads, not spin
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


class OrtNetwork(torch.nn.Module):
    """A torch Module that runs one ONNX file in ONNX Runtime (inputs ``image`` and optional ``covariates``)."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        self.session = _session(self.path, threads or torch.get_num_threads())
        self.input_names = [i.name for i in self.session.get_inputs()]

    def forward(self, x: torch.Tensor, covariates: torch.Tensor | None = None) -> torch.Tensor:
        feed = {"image": x.detach().float().cpu().contiguous().numpy()}
        if "covariates" in self.input_names:
            if covariates is None:
                raise ValueError("this network needs covariates")
            feed["covariates"] = covariates.detach().float().cpu().contiguous().numpy()
        return torch.from_numpy(self.session.run(None, feed)[0])

    def __repr__(self) -> str:
        return f"OrtNetwork({self.path.name})"


class OnnxModel:
    """A trained model whose networks run in ONNX Runtime, with the :class:`~sobre.learn.TrainedModel` API.

    ``predict`` preprocesses, batches and post-processes exactly as the PyTorch model does (it is the
    same code); only the forward passes run in ONNX Runtime, in fp32 or int8. ``features`` is not
    available (the ONNX files hold the whole network).

    Attributes
    ----------
    runtime : {"onnx-fp32", "onnx-int8"}
    files : list of Path
        The ONNX file of each member network.
    """

    def __init__(self, model, files: list, runtime: str, threads: int | None = None) -> None:
        if len(files) != len(model.networks):
            raise InputError("one ONNX file per member network is needed", expected=str(len(model.networks)),
                             found=str(len(files)))
        model.networks = [OrtNetwork(f, threads) for f in files]
        model.precision = "fp32"
        self._model = model
        self.runtime = runtime
        self.files = [Path(f) for f in files]

    def predict(self, images, **kwargs):
        """As :meth:`sobre.learn.TrainedModel.predict`."""
        return self._model.predict(images, **kwargs)

    def prepare(self, image):
        return self._model.prepare(image)

    def features(self, *args, **kwargs):
        raise InputError("features() is not available with ONNX Runtime", expected="runtime='torch'",
                         found=self.runtime, fix="load the package with runtime='torch' for encoder features")

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._model, name)

    def __repr__(self) -> str:
        m = self._model
        what = m.task.kind if m.task else "encoder"
        return f"OnnxModel({self.runtime}, run {m.run_id}, {what}, {len(self.files)} network(s))"


# ----------------------------------------------------------------------------------- helpers
def machine_info(threads: int) -> dict:
    """CPU, threads and load, for any measurement (figures only mean something with these)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {"cpu": cpu, "cpus": os.cpu_count(), "threads": threads, "load_average_1_5_15": load,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default (spinning)"),
            "python": platform.python_version()}


def _version(name: str) -> str | None:
    try:
        return importlib_metadata.version(name)
    except importlib_metadata.PackageNotFoundError:
        return None


def _fit(arr: np.ndarray, roi: tuple) -> np.ndarray:
    """Centre crop or zero-pad the spatial axes of ``arr`` (C, *spatial) to ``roi``."""
    out = np.zeros((arr.shape[0], *roi), np.float32)
    src, dst = [slice(None)], [slice(None)]
    for n, r in zip(arr.shape[1:], roi):
        if n >= r:
            a = (n - r) // 2
            src.append(slice(a, a + r))
            dst.append(slice(0, r))
        else:
            a = (r - n) // 2
            src.append(slice(0, n))
            dst.append(slice(a, a + n))
    out[tuple(dst)] = arr[tuple(src)]
    return out


def _roi(model) -> tuple:
    t = model.task
    if t is not None and t.kind == "segmentation" and t.patch:
        return tuple(int(v) for v in t.patch)
    if model.input_shape is None:
        raise InputError(f"run {model.run_id} records no input shape", expected="a fixed preprocessed shape",
                         fix="ONNX export needs the network's input shape (train with a fixed shape)")
    return tuple(model.input_shape)


def _n_cov(model) -> int:
    return len(model.task.covariates) if model.task is not None else 0


def _export_one(net: torch.nn.Module, path: Path, example: tuple, opset: int) -> None:
    names = ["image", "covariates"][:len(example)]
    axes = {n: {0: "batch"} for n in names}
    axes["output"] = {0: "batch"}
    net = copy.deepcopy(net).to(memory_format=torch.contiguous_format).float().eval()
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated in torch >= 2.9 (still supported)
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(net, example, str(path), dynamo=False, input_names=names, output_names=["output"],
                              dynamic_axes=axes, opset_version=opset, do_constant_folding=True)
        except Exception as exc:  # noqa: BLE001 - any exporter failure is reported the same way
            raise InputError(f"this network cannot be exported to ONNX ({type(exc).__name__}: {str(exc)[:300]})",
                             fix="keep the PyTorch runtime for this model") from None


def _torch_out(net, x: np.ndarray, cov: np.ndarray | None) -> np.ndarray:
    with torch.inference_mode():
        xt = torch.from_numpy(x)
        y = net(xt, torch.from_numpy(cov)) if cov is not None else net(xt)
        y = y[0] if isinstance(y, tuple) else y
        return y.float().numpy()


def _ort_out(sess, x: np.ndarray, cov: np.ndarray | None) -> np.ndarray:
    feed = {"image": x}
    if cov is not None:
        feed["covariates"] = cov
    return sess.run(None, feed)[0]


_ROUNDS = 5


def _interleaved_ms(fns: dict, repeats: int, warmup: int = 3) -> dict:
    """Median milliseconds per call of each function, measured in interleaved rounds (a shared CPU's load
    then weighs on every runtime alike)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict = {k: [] for k in fns}
    per_round = max(1, -(-repeats // _ROUNDS))
    for _ in range(_ROUNDS):
        for k, fn in fns.items():
            for _ in range(per_round):
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


# ------------------------------------------------------------------------------------- inputs
def _inputs(ws, model, run_series: dict, options: OnnxOptions, notes: list) -> tuple:
    """(dataset, calibration series, held-out series, their descriptions), from what the workspace holds."""
    if options.calibration:
        ds = ws.dataset(options.calibration)
        cal = list(ds.series)[:options.n_calibration]
        return ds, cal, [], f"{len(cal)} images of {ds.ref} (given for calibration)", ""
    ds = run_series.get("dataset")
    if ds is None:
        notes.append(run_series.get("note") or "the model's dataset version is not in this workspace")
        return None, [], [], "", ""
    dev, test = run_series.get("train", []), run_series.get("test", [])
    cal = dev[:options.n_calibration]
    held = test[:options.max_heldout]
    return ds, cal, held, f"{len(cal)} images of the training split of {ds.ref}", \
        (f"{len(held)} held-out test images of {ds.ref}" if held else "")


def _arrays(model, ds, series, roi) -> np.ndarray:
    return np.stack([_fit(np.asarray(model.prepare(ds.image(s))[0], np.float32), roi) for s in series])


# -------------------------------------------------------------------------------------- main
def export_onnx(folder: Path, load_torch, *, ws=None, run_series: dict | None = None,
                options: OnnxOptions | None = None, progress=None) -> dict:
    """Export, check and measure the package networks in ``folder``; writes ``onnx/`` and returns ``onnx.json``'s dict.

    Parameters
    ----------
    folder : Path
        The package folder being built (``onnx/`` is written there).
    load_torch : callable
        ``load_torch(precision)`` → a fresh :class:`~sobre.learn.TrainedModel` of the package.
    ws : Workspace, optional
        Where calibration and held-out images come from.
    run_series : dict, optional
        ``{"dataset": Dataset, "train": [...], "test": [...]}``: the run's own split, when known.
    options : OnnxOptions

    Raises
    ------
    InputError
        The network cannot be exported, or ONNX Runtime differs from PyTorch beyond the tolerance.
    """
    options = options or OnnxOptions()
    progress = progress or (lambda *a: None)
    threads = options.threads or torch.get_num_threads()
    out_dir = folder / "onnx"
    out_dir.mkdir(exist_ok=True)
    model = load_torch("fp32")
    roi = _roi(model)
    n_cov = _n_cov(model)
    cin = model.in_channels
    notes: list[str] = []
    ds, cal_series, held_series, cal_desc, held_desc = _inputs(ws, model, run_series or {}, options, notes)
    rng = np.random.default_rng(0)
    if cal_series:
        progress("preparing inputs", 0, len(cal_series))
        x = _arrays(model, ds, cal_series, roi)
    else:
        x = rng.standard_normal((options.n_calibration, cin, *roi)).astype(np.float32)
        cal_desc = f"{options.n_calibration} standard-normal inputs (no training-like images available)"
    cov = rng.standard_normal((len(x), n_cov)).astype(np.float32) if n_cov else None

    # -- export and check every member against PyTorch eager fp32
    members, worst = [], 0.0
    for i, net in enumerate(model.networks):
        progress("exporting to ONNX", i, len(model.networks))
        path = out_dir / f"member{i}.onnx"
        example = (torch.from_numpy(x[:1]),) + ((torch.from_numpy(cov[:1]),) if cov is not None else ())
        _export_one(net, path, example, options.opset)
        sess = _session(path, threads)
        ref = np.concatenate([_torch_out(net, x[j:j + 1], None if cov is None else cov[j:j + 1])
                              for j in range(len(x))])
        got = np.concatenate([_ort_out(sess, x[j:j + 1], None if cov is None else cov[j:j + 1])
                              for j in range(len(x))])
        diff = float(np.max(np.abs(got - ref))) if ref.size else 0.0
        bound = options.atol + options.rtol * np.abs(ref)
        if ref.shape != got.shape or np.any(np.abs(got - ref) > bound):
            raise InputError(f"ONNX Runtime output of member {i} differs from PyTorch beyond the tolerance",
                             expected=f"|ort - torch| <= {options.atol:g} + {options.rtol:g}·|torch|",
                             found=f"max abs difference {diff:.3g} (output shapes {ref.shape} vs {got.shape})",
                             fix="keep the PyTorch runtime for this model, or report the network to Sobre")
        worst = max(worst, diff)
        del sess  # no idle ONNX Runtime thread pool may compete with what is timed below
        members.append({"fp32": f"onnx/{path.name}", "int8": None})
    inputs = [{"name": "image", "shape": ["batch", cin, *roi], "dtype": "float32"}]
    if n_cov:
        inputs.append({"name": "covariates", "shape": ["batch", n_cov], "dtype": "float32",
                       "names": list(model.task.covariates)})
    record = {
        "format": ONNX_FORMAT,
        "exporter": f"torch.onnx TorchScript-based exporter, opset {options.opset}, dynamic batch axis",
        "versions": {"torch": _version("torch"), "onnx": _version("onnx"), "onnxruntime": _version("onnxruntime")},
        "inputs": inputs, "output": "the network's raw output (logits, value or class logits per voxel), as PyTorch",
        "members": members,
        "check": {"inputs": cal_desc, "n": int(len(x)), "reference": "PyTorch eager, fp32",
                  "max_abs_diff": worst, "atol": options.atol, "rtol": options.rtol, "passed": True},
        "options": options.model_dump(mode="json"),
        "notes": notes,
    }

    # -- int8
    int8 = {"measured": False}
    if options.int8 == "never":
        int8["reason"] = "not requested (int8 = never)"
    elif not cal_series:
        int8["reason"] = "no training-like images to calibrate on (give a dataset version for calibration)"
    else:
        progress("quantizing to int8", 0, len(members))
        for i, m in enumerate(members):
            m["int8"] = f"onnx/member{i}.int8.onnx"
            _quantize(folder / m["fp32"], folder / m["int8"], x, cov)
        diffs = []
        for i, m in enumerate(members):
            s32, s8 = _session(folder / m["fp32"], threads), _session(folder / m["int8"], threads)
            a = np.concatenate([_ort_out(s32, x[j:j + 1], None if cov is None else cov[j:j + 1]) for j in range(len(x))])
            b = np.concatenate([_ort_out(s8, x[j:j + 1], None if cov is None else cov[j:j + 1]) for j in range(len(x))])
            diffs.append(float(np.max(np.abs(a - b))))
            del s32, s8
        int8 = {"measured": True, "method": "ONNX Runtime static quantization (QDQ), per-channel int8 weights, "
                                            "uint8 activations, MinMax calibration",
                "calibration": cal_desc, "max_abs_diff_vs_fp32_on_calibration": max(diffs)}

    # -- latency, batch of one, same input and threads for every runtime
    progress("measuring latency", 0, 1)
    x1 = x[:1]
    c1 = None if cov is None else cov[:1]
    net0 = model.networks[0]
    torch_model = load_torch("run")
    prev = torch.get_num_threads()
    fns = {"torch_fp32": lambda: _torch_eager(net0, x1, c1, False, model.channels_last)}
    if torch_model.precision != "fp32":
        fns[f"torch_{torch_model.precision}"] = lambda: _torch_eager(
            torch_model.networks[0], x1, c1, torch_model.precision == "bf16", torch_model.channels_last)
    sessions = {k: _session(folder / members[0][k], threads) for k in (("fp32", "int8") if int8["measured"]
                                                                     else ("fp32",))}
    for k, sess in sessions.items():
        fns[f"ort_{k}"] = lambda s=sess: _ort_out(s, x1, c1)
    try:
        torch.set_num_threads(threads)
        lat = {"batch": 1, "input_shape": list(x1.shape), "repeats": options.repeats, "rounds": _ROUNDS,
               **{f"{k}_ms": v for k, v in _interleaved_ms(fns, options.repeats).items()}}
    finally:
        torch.set_num_threads(prev)
        del sessions, fns
    lat["ort_fp32_over_torch_fp32"] = lat["ort_fp32_ms"] / lat["torch_fp32_ms"]
    if "ort_int8_ms" in lat:
        lat["ort_int8_over_ort_fp32"] = lat["ort_int8_ms"] / lat["ort_fp32_ms"]
    lat["note"] = ("per member network, one image, medians of interleaved rounds; ratios below 1 mean faster; "
                   "the machine below, at that load")
    lat["machine"] = machine_info(threads)
    record["latency"] = lat

    # -- held-out accuracy: PyTorch fp32 vs ONNX Runtime fp32 vs int8, through predict()
    held = {"measured": False, "reason": "no held-out test images of the run in this workspace"}
    if held_series:
        progress("held-out predictions", 0, 3)
        held = _heldout(model, folder, members, ds, held_series, int8["measured"], threads, held_desc)
    record["heldout"] = held
    if int8["measured"]:
        int8.update(_choose(lat, held, options))
        if not int8["chosen"] and not options.keep_int8:
            for m in members:
                (folder / m["int8"]).unlink()
                m["int8"] = None
            int8["files"] = "removed (not chosen)"
    record["int8"] = int8
    torch_ms = lat.get(f"torch_{torch_model.precision}_ms", lat["torch_fp32_ms"])
    candidates = {"torch": torch_ms, "onnx-fp32": lat["ort_fp32_ms"]}
    if int8.get("chosen"):
        candidates["onnx-int8"] = lat["ort_int8_ms"]
    record["recommended"] = min(candidates, key=candidates.get)
    record["recommended_basis"] = (f"fastest measured of: torch at the run's precision ({torch_model.precision}, "
                                   "what the validation report evaluated), ONNX Runtime fp32"
                                   + (", int8 (kept)" if int8.get("chosen") else ""))
    return record


def _torch_eager(net, x, cov, bf16: bool, channels_last: bool):
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        xt = torch.from_numpy(x)
        if channels_last and xt.ndim == 5:
            xt = xt.contiguous(memory_format=torch.channels_last_3d)
        return net(xt, torch.from_numpy(cov)) if cov is not None else net(xt)


class _Reader:
    def __init__(self, x: np.ndarray, cov: np.ndarray | None) -> None:
        self._it = iter([{"image": x[i:i + 1], **({"covariates": cov[i:i + 1]} if cov is not None else {})}
                         for i in range(len(x))])

    def get_next(self):
        return next(self._it, None)

    def rewind(self):  # pragma: no cover - not used by MinMax
        pass


def _quantize(src: Path, dst: Path, x: np.ndarray, cov: np.ndarray | None) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    reader = type("SobreCalibration", (_Reader, CalibrationDataReader), {})(x, cov)
    pre = dst.with_name(dst.stem + ".pre.onnx")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
            quantize_static(str(pre), str(dst), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                            weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8)
    except SobreError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"int8 quantization failed ({type(exc).__name__}: {str(exc)[:300]})",
                         fix="export with int8 = \"never\"") from None
    finally:
        if pre.exists():
            pre.unlink()


def _labels_of(ds_series, task) -> np.ndarray | None:
    vals = [s.metadata.get(task.label) for s in ds_series] if task.label else []
    if not vals or any(v is None for v in vals):
        return None
    if task.kind == "binary":
        pos = str(task.positive)
        return np.array([str(v) == pos or _num_eq(v, pos) for v in vals], bool)
    if task.kind == "multiclass":
        idx = {str(c): i for i, c in enumerate(task.classes)}
        out = [idx.get(str(v), idx.get(_num_str(v))) for v in vals]
        return None if any(o is None for o in out) else np.array(out)
    if task.kind == "regression":
        try:
            return np.array([float(v) for v in vals])
        except (TypeError, ValueError):
            return None
    return None


def _num_str(v) -> str:
    try:
        f = float(v)
        return str(int(f)) if f.is_integer() else str(f)
    except (TypeError, ValueError):
        return str(v)


def _num_eq(v, pos: str) -> bool:
    return _num_str(v) == _num_str(pos)


def _metric(kind: str, y, scores) -> tuple[str, float | None]:
    from sobre.validate import auc

    if y is None:
        return "", None
    if kind == "binary":
        return "auc", auc(y, scores)
    if kind == "multiclass":
        return "accuracy", float(np.mean(np.argmax(scores, 1) == y))
    if kind == "regression":
        return "mae", float(np.mean(np.abs(scores - y)))
    return "", None


def _agreement(kind: str, a, b) -> float:
    if kind == "binary":
        return float(np.mean((a.scores >= 0.5) == (b.scores >= 0.5)))
    if kind in ("multiclass",):
        return float(np.mean(np.argmax(a.scores, 1) == np.argmax(b.scores, 1)))
    if kind == "multilabel":
        return float(np.mean((a.scores >= 0.5) == (b.scores >= 0.5)))
    if kind == "regression":
        return float(np.mean(np.isclose(a.scores, b.scores, rtol=0.05, atol=1e-6)))
    vox = [np.asarray(m1.array) == np.asarray(m2.array) for m1, m2 in zip(a.masks, b.masks)]
    return float(np.mean(np.concatenate([v.ravel() for v in vox])))


def _dice(a, b) -> float | None:
    vals = []
    for m1, m2 in zip(a.masks, b.masks):
        p, q = np.asarray(m1.array) > 0, np.asarray(m2.array) > 0
        s = p.sum() + q.sum()
        if s:
            vals.append(2 * float((p & q).sum()) / float(s))
    return float(np.mean(vals)) if vals else None


def _heldout(model, folder, members, ds, series, with_int8: bool, threads: int, desc: str) -> dict:
    from sobre.learn import load_model

    kind = model.task.kind
    base = model.predict(ds, series=series)
    runs = {"torch_fp32": base}
    runs["ort_fp32"] = OnnxModel(load_model(model.path, precision="fp32"), [folder / m["fp32"] for m in members],
                                 "onnx-fp32", threads).predict(ds, series=series)
    if with_int8:
        runs["ort_int8"] = OnnxModel(load_model(model.path, precision="fp32"), [folder / m["int8"] for m in members],
                                     "onnx-int8", threads).predict(ds, series=series)
    y = _labels_of(series, model.task)
    out = {"measured": True, "images": desc, "n": len(series), "task": kind}
    name = ""
    for k, p in runs.items():
        if kind == "segmentation":
            continue
        name, value = _metric(kind, y, p.scores)
        if name:
            out[f"{name}_{k}"] = value
        if k != "torch_fp32":
            out[f"max_abs_score_diff_{k}_vs_torch_fp32"] = float(np.max(np.abs(p.scores - base.scores)))
    out["metric"] = name or ("dice_vs_torch_fp32" if kind == "segmentation" else "agreement only (no labels)")
    for k in [k for k in runs if k != "torch_fp32"]:
        out[f"agreement_{k}_vs_torch_fp32"] = _agreement(kind, runs[k], base)
        if kind == "segmentation":
            out[f"dice_{k}_vs_torch_fp32"] = _dice(runs[k], base)
    if name and with_int8 and out.get(f"{name}_ort_int8") is not None and out.get(f"{name}_torch_fp32") is not None:
        out[f"{name}_delta_int8"] = out[f"{name}_ort_int8"] - out[f"{name}_torch_fp32"]
    return out


def _choose(lat: dict, held: dict, o: OnnxOptions) -> dict:
    """int8 or not, by the measurements and the thresholds; the reason in words."""
    speedup = lat["ort_fp32_ms"] / lat["ort_int8_ms"]
    rule = (f"int8 is kept when at least {o.int8_min_speedup:g}x faster than ONNX Runtime fp32, with held-out "
            f"agreement >= {o.int8_min_agreement:g} and a metric drop <= {o.int8_max_metric_drop:g}")
    if speedup < o.int8_min_speedup:
        return {"chosen": False, "speedup_vs_ort_fp32": speedup, "rule": rule,
                "reason": f"int8 runs at {speedup:.2f}x the speed of ONNX Runtime fp32 here: not faster"}
    if not held.get("measured"):
        return {"chosen": False, "speedup_vs_ort_fp32": speedup, "rule": rule,
                "reason": "no held-out images to measure its accuracy on"}
    agree = held.get("agreement_ort_int8_vs_torch_fp32")
    if agree is None or agree < o.int8_min_agreement:
        return {"chosen": False, "speedup_vs_ort_fp32": speedup, "rule": rule,
                "reason": f"held-out agreement with fp32 {agree:.4f} is below {o.int8_min_agreement:g}"}
    name = held.get("metric")
    delta = held.get(f"{name}_delta_int8")
    dice = held.get("dice_ort_int8_vs_torch_fp32")
    drop = None
    if delta is not None and name == "mae":  # regression: relative increase of the mean absolute error
        drop = delta / max(abs(held.get("mae_torch_fp32") or 0.0), 1e-12)
    elif delta is not None:
        drop = -delta
    elif dice is not None:
        drop = 1.0 - dice
    if drop is not None and not math.isnan(drop) and drop > o.int8_max_metric_drop:
        return {"chosen": False, "speedup_vs_ort_fp32": speedup, "rule": rule,
                "reason": f"held-out {name or 'Dice'} changes by {drop:.4f} (more than {o.int8_max_metric_drop:g})"}
    return {"chosen": True, "speedup_vs_ort_fp32": speedup, "rule": rule,
            "reason": f"{speedup:.2f}x faster than fp32 with held-out agreement {agree:.4f}"}
