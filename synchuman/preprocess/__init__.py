"""The preprocess stage (CPU): photo bytes -> framed stage-1 input, conditioning crop, person mask, report.

* :mod:`~synchuman.preprocess.pipeline` - :func:`preprocess` (bytes -> :class:`PreprocessResult`), the code
  behind both ``synchuman preprocess`` and the PreprocessService.
* :mod:`~synchuman.preprocess.framing` - upstream-identical geometry other stages import:
  :func:`frame_multiview` (768x768 RGBA), :func:`face_crop`, :func:`composite_on_white`,
  :func:`conditioning_crop` (518x518 DINOv2 input).
* :mod:`~synchuman.preprocess.decode` - safe decoding (limits, EXIF, every colour mode).
* :mod:`~synchuman.preprocess.segment` - offline ONNX person segmentation (default u2netp).
* :mod:`~synchuman.preprocess.mask`, :mod:`~synchuman.preprocess.quality` - mask clean-up, alpha matting,
  quality gate.
* :mod:`~synchuman.preprocess.errors` - :class:`PreprocessError` and subclasses (stable codes, actionable
  messages).
"""
