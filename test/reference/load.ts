// The float64 reference of whatever family a model directory holds (its config.json's
// model_type): what the engine's tests compare against, one entry point for all families.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

import type { DecoderReference, ReferenceOptions } from './decoder.js';
import { DeepseekReference } from './deepseek.js';
import { MixtralReference } from './mixtral.js';
import { Qwen3MoeReference } from './qwen3-moe.js';

export const REFERENCE_MODEL_TYPES = ['deepseek_v2', 'deepseek_v3', 'qwen3_moe', 'mixtral'] as const;

export function loadReference(dir: string, opts: ReferenceOptions = {}): DecoderReference {
  const path = join(dir, 'config.json');
  const modelType = (JSON.parse(readFileSync(path, 'utf8')) as { model_type?: unknown }).model_type;
  switch (modelType) {
    case 'deepseek_v2':
    case 'deepseek_v3':
      return DeepseekReference.load(dir, opts);
    case 'qwen3_moe':
      return Qwen3MoeReference.load(dir, opts);
    case 'mixtral':
      return MixtralReference.load(dir, opts);
    default:
      throw new Error(`${path}: model_type ${JSON.stringify(modelType)} is not one of ${REFERENCE_MODEL_TYPES.join(', ')}`);
  }
}
