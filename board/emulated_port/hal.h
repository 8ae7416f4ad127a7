// The board interface of the emulated port: each board directory
// (board/emulated_m0plus, board/emulated_m4) implements these for its QEMU machine.
#ifndef EMU_HAL_H
#define EMU_HAL_H

#include <stdint.h>

void hal_init(void);
// UART: non-blocking receive check, blocking receive and transmit of one byte.
int hal_uart_rx_ready(void);
int hal_uart_rx(void);
void hal_uart_tx(uint8_t c);
// The raw value of a free-running 32-bit up-counter; HAL_TIMER_NS_NUM / HAL_TIMER_NS_DEN
// nanoseconds of virtual time per count (mpconfigboard.h). Under `-icount shift=0` one
// nanosecond of virtual time is exactly one guest instruction.
uint32_t hal_timer_raw(void);

#endif
