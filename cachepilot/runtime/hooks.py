"""The diffusers hooks that connect a transformer to the CacheRuntime (no class is patched)."""

from __future__ import annotations

from diffusers.hooks.hooks import BaseState, ModelHook, StateManager

TRANSFORMER_HOOK = "cachepilot_runtime"
EMBEDDER_HOOK = "cachepilot_time_embedder"
BLOCK_HOOK = "cachepilot_block"


class _NoState(BaseState):
    def reset(self, *args, **kwargs) -> None:
        pass


class TransformerHook(ModelHook):
    """Wraps the transformer's forward: opens and closes a runtime call. Stateful so that diffusers'
    `cache_context` hands it the pipeline's context (branch name, step index, sigma)."""

    _is_stateful = True

    def __init__(self, runtime, expert: int = 0):
        super().__init__()
        self.runtime = runtime
        self.expert = expert
        self.state_manager = StateManager(_NoState)

    def new_forward(self, module, *args, **kwargs):
        self.runtime.begin_call(self.state_manager._context, args, kwargs, self.expert)
        try:
            return self.fn_ref.original_forward(*args, **kwargs)
        finally:
            self.runtime.end_call()

    def reset_state(self, module):
        # Pipelines reset stateful hooks when a generation ends; keep its summary readable until the next call.
        self.runtime.end_generation()
        return module


class TimeEmbedderHook(ModelHook):
    """Captures the timestep embedding (TeaCache's indicator) where the adapter names a module for it."""

    def __init__(self, runtime):
        super().__init__()
        self.runtime = runtime

    def post_forward(self, module, output):
        self.runtime.capture_temb(output)
        return output


class BlockHook(ModelHook):
    """Runs, skips or sub-batches one block as the runtime's plan for this call says."""

    def __init__(self, runtime, index: int):
        super().__init__()
        self.runtime = runtime
        self.index = index

    def new_forward(self, module, *args, **kwargs):
        return self.runtime.run_block(self.index, module, self.fn_ref.original_forward, args, kwargs)
