// The emulated Cortex-M3's hardware: QEMU's MPS2 AN385 model (the AN386's memory map and
// peripherals), its CMSDK UART0 and timer0.
#include <stdint.h>
#include "hal.h"

#define REG(addr) (*(volatile uint32_t *)(addr))

#define UART0 0x40004000u
#define UART_DATA     REG(UART0 + 0x00)
#define UART_STATE    REG(UART0 + 0x04) // bit 0: TX full, bit 1: RX full
#define UART_CTRL     REG(UART0 + 0x08) // bit 0: TX enable, bit 1: RX enable
#define UART_BAUDDIV  REG(UART0 + 0x10)

#define TIMER0 0x40000000u
#define TIMER_CTRL    REG(TIMER0 + 0x00)
#define TIMER_VALUE   REG(TIMER0 + 0x04)
#define TIMER_RELOAD  REG(TIMER0 + 0x08)

void hal_init(void) {
    UART_BAUDDIV = 16;
    UART_CTRL = 3;
    TIMER_RELOAD = 0xffffffffu;
    TIMER_VALUE = 0xffffffffu;
    TIMER_CTRL = 1;
}

int hal_uart_rx_ready(void) {
    return (UART_STATE & 2) != 0;
}

int hal_uart_rx(void) {
    while ((UART_STATE & 2) == 0) {
    }
    return (int)(UART_DATA & 0xff);
}

void hal_uart_tx(uint8_t c) {
    while (UART_STATE & 1) {
    }
    UART_DATA = c;
}

uint32_t hal_timer_raw(void) {
    // The timer counts down; its complement counts up.
    return ~TIMER_VALUE;
}
