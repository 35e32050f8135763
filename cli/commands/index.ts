// One line per command module; each exports register(program).
import type { Command } from 'commander';
import { register as info } from './info.js';

export const registry: Array<(program: Command) => void> = [info];
