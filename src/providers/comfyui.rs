//! ComfyUI: a workflow template filled from an image request, submitted to `POST {base}/prompt`,
//! followed over `/ws` or `/history/{prompt_id}`, its outputs fetched from `/view`. Pure
//! translation, no I/O.
