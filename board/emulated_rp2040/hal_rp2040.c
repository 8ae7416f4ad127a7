// The emulated RP2040's hardware under rp2040js: UART0 (PL011) and the microsecond timer.
// The harness starts the core at the reset vector with clocks already running, as the
// bootrom and the SDK's clock set-up would leave them.
#include <stdint.h>
#include "hal.h"

#define REG(addr) (*(volatile uint32_t *)(addr))

#define UART0 0x40034000u
#define UART_DR     REG(UART0 + 0x000)
#define UART_FR     REG(UART0 + 0x018) // bit 4: RX FIFO empty, bit 5: TX FIFO full
#define UART_IBRD   REG(UART0 + 0x024)
#define UART_FBRD   REG(UART0 + 0x028)
#define UART_LCR_H  REG(UART0 + 0x02c)
#define UART_CR     REG(UART0 + 0x030)

#define TIMER_RAWL  REG(0x40054000u + 0x028)

void hal_init(void) {
    UART_IBRD = 67; // 115200 baud at 125 MHz
    UART_FBRD = 52;
    UART_LCR_H = (3u << 5) | (1u << 4); // 8 bits, FIFOs
    UART_CR = (1u << 9) | (1u << 8) | 1u; // RX, TX, enable
}

int hal_uart_rx_ready(void) {
    return (UART_FR & (1u << 4)) == 0;
}

int hal_uart_rx(void) {
    while (UART_FR & (1u << 4)) {
    }
    return (int)(UART_DR & 0xff);
}

void hal_uart_tx(uint8_t c) {
    while (UART_FR & (1u << 5)) {
    }
    UART_DR = c;
}

uint32_t hal_timer_raw(void) {
    return TIMER_RAWL;
}
