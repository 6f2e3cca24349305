"""The studies: one module per study, each a `experiments.study.StudyCommand` named ``STUDY``
with its sizes in ``conf/study/<key>.yaml`` and its figures in `experiments.figures`.

    minilm            MiniLM end to end and its bounds (records ``real``)
    lm                SmolLM2-135M end to end (perplexity) and its bounds
    lm_calibration    SmolLM2: OPTQ and Qronos against calibration size and damping
    strength          SmolLM2: Qronos' correction strength, fixed and chosen per layer
                      (records ``lm_strength``)
    qat               QAT against PTQ on MiniLM, and the output scales
    rate_distortion   every quantizer against the rate-distortion limit on MiniLM
    allocation        bits per MiniLM layer under an average-bits budget
    checkpoint        packed GPTQ checkpoints: size and round trip

`experiments.reproduce` imports them (its ``STUDIES``); nothing below the studies imports one.
"""
