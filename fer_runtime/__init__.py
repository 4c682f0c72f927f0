"""Real-time facial expression recognition with ONNX Runtime and OpenCV (no torch)."""

from fer_runtime.contract import ContractError, ModelContract, read_onnx_contract

__all__ = ["ContractError", "ModelContract", "read_onnx_contract"]
