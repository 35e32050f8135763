// One line per command module; each exports register(program).
import type { Command } from 'commander';
import { register as calibrate } from './calibrate.js';
import { register as convert } from './convert.js';
import { register as demo } from './demo.js';
import { register as generate } from './generate.js';
import { register as info } from './info.js';
import { register as inspect } from './inspect.js';
import { register as parity } from './parity.js';
import { register as tokenize } from './tokenize.js';

export const registry: Array<(program: Command) => void> = [demo, generate, info, inspect, convert, tokenize, parity, calibrate];
