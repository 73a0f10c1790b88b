//! A mock ComfyUI on its own random port, speaking ComfyUI's real API shapes.
