// The emulated Cortex-M0+'s hardware: QEMU's nRF51 model (machine "microbit"), used only
// for its Cortex-M0 core (ARMv6-M), its UART and one timer.
#include <stdint.h>
#include "hal.h"
#include "mpconfigboard.h"

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
#define TIMER_CC1           REG(TIMER0 + 0x544)
#define TIMER_EVENTS_COMPARE1 REG(TIMER0 + 0x144)
#define TIMER_INTENSET      REG(TIMER0 + 0x304)
#define TIMER_INTENCLR      REG(TIMER0 + 0x308)
#define TIMER_INT_COMPARE1  (1u << 17)
#define TIMER0_IRQ          (8)
#define NVIC_ISER           REG(0xE000E100u)

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

// The idle wait (main.c mp_hal_delay_us): WFI until TIMER0's compare 1 fires at the deadline.
// With `-icount sleep=off` QEMU moves virtual time on to it at once, so an idle second costs
// the host almost nothing and the guest no instructions (host_tools/emu/c6.py).
void hal_irq(void) {
    TIMER_INTENCLR = TIMER_INT_COMPARE1;
    TIMER_EVENTS_COMPARE1 = 0;
}

void hal_wait_ns(uint32_t ns) {
    uint32_t counts = (uint32_t)((uint64_t)ns * HAL_TIMER_NS_DEN / HAL_TIMER_NS_NUM);
    if (counts < 2) {
        return;
    }
    uint32_t deadline = hal_timer_raw() + counts;
    TIMER_EVENTS_COMPARE1 = 0;
    TIMER_CC1 = deadline;
    NVIC_ISER = 1u << TIMER0_IRQ;
    TIMER_INTENSET = TIMER_INT_COMPARE1;
    // hal_irq turns the interrupt off: until then the deadline has not come
    while ((TIMER_INTENSET & TIMER_INT_COMPARE1) && (int32_t)(deadline - hal_timer_raw()) > 0) {
        __asm__ volatile ("wfi");
    }
    TIMER_INTENCLR = TIMER_INT_COMPARE1;
}
