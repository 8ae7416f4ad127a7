// The emulated Cortex-M0+'s hardware: QEMU's nRF51 model (machine "microbit"), used only
// for its Cortex-M0 core (ARMv6-M), its UART and one timer.
#include <stdint.h>
#include "hal.h"

#define REG(addr) (*(volatile uint32_t *)(addr))

#define UART0 0x40002000u
#define UART_STARTRX        REG(UART0 + 0x000)
#define UART_STARTTX        REG(UART0 + 0x008)
#define UART_EVENTS_RXDRDY  REG(UART0 + 0x108)
#define UART_EVENTS_TXDRDY  REG(UART0 + 0x11C)
#define UART_ENABLE         REG(UART0 + 0x500)
#define UART_RXD            REG(UART0 + 0x518)
#define UART_TXD            REG(UART0 + 0x51C)

#define TIMER0 0x40008000u
#define TIMER_START         REG(TIMER0 + 0x000)
#define TIMER_CLEAR         REG(TIMER0 + 0x00C)
#define TIMER_CAPTURE0      REG(TIMER0 + 0x040)
#define TIMER_MODE          REG(TIMER0 + 0x504)
#define TIMER_BITMODE       REG(TIMER0 + 0x508)
#define TIMER_PRESCALER     REG(TIMER0 + 0x510)
#define TIMER_CC0           REG(TIMER0 + 0x540)

void hal_init(void) {
    UART_ENABLE = 4;
    UART_STARTTX = 1;
    UART_STARTRX = 1;
    TIMER_MODE = 0; // timer
    TIMER_BITMODE = 3; // 32 bit
    TIMER_PRESCALER = 0; // 16 MHz
    TIMER_CLEAR = 1;
    TIMER_START = 1;
}

int hal_uart_rx_ready(void) {
    return UART_EVENTS_RXDRDY != 0;
}

int hal_uart_rx(void) {
    while (UART_EVENTS_RXDRDY == 0) {
    }
    // Clear the event first: reading RXD raises it again while more bytes are queued.
    UART_EVENTS_RXDRDY = 0;
    return (int)(UART_RXD & 0xff);
}

void hal_uart_tx(uint8_t c) {
    UART_TXD = c;
    while (UART_EVENTS_TXDRDY == 0) {
    }
    UART_EVENTS_TXDRDY = 0;
}

uint32_t hal_timer_raw(void) {
    TIMER_CAPTURE0 = 1;
    return TIMER_CC0;
}
