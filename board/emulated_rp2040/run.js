// Runs the emulated RP2040 image (a flat binary linked at 0x10000000) on rp2040js, an RP2040
// model that counts Cortex-M0+ cycles: UART0 is this process's stdin/stdout (the host bridges
// them to a pty). No bootrom: the core starts at the image's reset vector with its stack
// pointer, as the bootrom and boot stage 2 would leave it. Only errors are logged (rp2040js
// logs every access to an unimplemented peripheral otherwise).
//   NODE_PATH=<dir with rp2040js> node run.js firmware.bin
'use strict';
const fs = require('fs');
const { RP2040, ConsoleLogger, LogLevel } = require('rp2040js');

const NS_PER_CYCLE = 8; // 125 MHz
const image = fs.readFileSync(process.argv[2]);
const mcu = new RP2040();
mcu.logger = new ConsoleLogger(LogLevel.Error, false);
mcu.flash.set(image, 0);
const vectors = new DataView(image.buffer, image.byteOffset, 8);
mcu.core.SP = vectors.getUint32(0, true);
mcu.core.PC = vectors.getUint32(4, true) & ~1;

const uart = mcu.uart[0];
let out = [];
uart.onByte = (b) => out.push(b);
let inq = Buffer.alloc(0);
process.stdin.on('data', (d) => { inq = Buffer.concat([inq, d]); });
process.stdin.on('end', () => process.exit(0));

function feed() {
  let n = 0;
  while (n < inq.length && !uart.rxFIFO.full) {
    uart.feedByte(inq[n++]);
  }
  if (n) {
    inq = inq.subarray(n);
  }
}

function run() {
  const { core, clock } = mcu;
  for (let i = 0; i < 500000; i++) {
    if ((i & 63) === 0 && inq.length) {
      feed();
    }
    if (core.waiting) {
      clock.tick(clock.nanosToNextAlarm || 1000);
    } else {
      clock.tick(core.executeInstruction() * NS_PER_CYCLE);
    }
  }
  if (out.length) {
    process.stdout.write(Buffer.from(out));
    out = [];
  }
  setImmediate(run);
}
run();
