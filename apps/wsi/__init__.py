"""wsi: whole-slide prognosis — slides to feature bags, attention-MIL survival, MoE-PKT, ONNX scoring."""
