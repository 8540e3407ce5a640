"""Parameter-efficient fine-tuning as reusable modules (no monkey-patched ``forward``).

``LoRALinear`` / ``LoRAConv2d`` wrap an existing layer; ``BottleneckAdapter`` is a residual
down-up projection; ``AdapterWrapped`` runs a block then an adapter.  ``apply_lora`` and
``insert_adapters`` replace sub-modules by name; ``PEFTModule`` marks every trainable PEFT part so
``mark_peft_trainable`` can freeze everything else.
"""

from medtransfer.shared.peft.modules import (  # noqa: F401
    AdapterWrapped,
    BottleneckAdapter,
    LoRAConv2d,
    LoRALinear,
    PEFTModule,
    apply_lora,
    count_parameters,
    insert_adapters,
    mark_peft_trainable,
    merge_lora,
)
