#!/usr/bin/env bash
# Entrypoint of the GPU image: find the TensorRT engine of the configured model for this GPU and
# TensorRT version in the cache volume, building it there on first start, then serve it.
#
# What to serve, as `dyhead-serve serve` reads it:
#   DYHEAD_SERVE_MODEL    a zoo name (default: the embedded default model), or a mounted folder
#                         holding a model.plan built for this GPU (served as it is) or a
#                         model.onnx + model.json (built into the cache)
#   DYHEAD_SERVE_CONFIG   instead: a Detectron2 DyHead config (mounted file or shipped name) ...
#   DYHEAD_SERVE_WEIGHTS  ... with its checkpoint; or a local copy of a zoo model's weights
#   DYHEAD_SERVE_MAX_BATCH_SIZE  the server's batch size; the engine's shape profile takes it
# How to build (part of the cache key with the model checksum, TensorRT version and GPU):
#   DYHEAD_ENGINE_PRECISION  a `dyhead-export engine --precision` (default: its default, fp16)
#   DYHEAD_ENGINE_PROFILE    a `dyhead-export engine --profile` preset (default: from the batch size)
#   DYHEAD_SERVE_CACHE       cache root: downloaded weights and engines/ (the volume)
#
# Arguments are more `dyhead-serve serve` flags (every flag also reads DYHEAD_SERVE_<FLAG>); a
# first argument that is not a flag is run instead, e.g. `docker run -it IMAGE bash`.
set -euo pipefail

if [[ $# -gt 0 && "$1" != -* ]]; then
    exec "$@"
fi

# The engine's profile must take the server's batches: a --max-batch-size flag wins, as it does
# in the server; without one, `dyhead-export engine` reads DYHEAD_SERVE_MAX_BATCH_SIZE or the
# server's default, as the server does. Only what is set here is passed on: every default is the
# commands' own.
engine=(dyhead-export engine)
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[i]}" in
        --max-batch-size) engine+=(--max-batch "${args[i + 1]:-}") ;;
        --max-batch-size=*) engine+=(--max-batch "${args[i]#*=}") ;;
    esac
done
if [[ -n "${DYHEAD_ENGINE_PRECISION:-}" ]]; then
    engine+=(--precision "$DYHEAD_ENGINE_PRECISION")
fi
if [[ -n "${DYHEAD_ENGINE_PROFILE:-}" ]]; then
    engine+=(--profile "$DYHEAD_ENGINE_PROFILE")
fi
if [[ -n "${DYHEAD_SERVE_CONFIG:-}" ]]; then
    engine+=(--config "$DYHEAD_SERVE_CONFIG")
elif [[ -n "${DYHEAD_SERVE_MODEL:-}" ]]; then
    engine+=(--model "$DYHEAD_SERVE_MODEL")
fi
if [[ -n "${DYHEAD_SERVE_WEIGHTS:-}" ]]; then
    engine+=(--weights "$DYHEAD_SERVE_WEIGHTS")
fi

# Standard output: the engine folder only. Progress and the line naming GPU, TensorRT version and
# model go to standard error, that is, the container log.
engine_dir="$("${engine[@]}")"

# The server is told the engine folder; the variables that named its source must not reach its
# settings as well (--config with --model is an error there).
unset DYHEAD_SERVE_MODEL DYHEAD_SERVE_CONFIG DYHEAD_SERVE_WEIGHTS DYHEAD_SERVE_BACKEND
exec dyhead-serve serve --model "$engine_dir" --backend tensorrt --host 0.0.0.0 "$@"
