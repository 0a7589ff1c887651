#!/usr/bin/env node
// The `kiln` command. The TypeScript sources are compiled to dist/ by `npm run build` (run by npm ci).
import { main } from '../dist/src/cli/main.js';

process.exitCode = await main(process.argv);
