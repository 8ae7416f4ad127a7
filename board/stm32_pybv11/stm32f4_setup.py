# The STM32F4 drivers' set-up (board/stm32f4.py DmaAdc and BackupSram; the register map
# and bits: ST's RM0090, rev 19): the timers, ADCs and DMA streams of the sampling, and the
# backup SRAM's clock and regulator. Run at boot, and for the sampling again after a DMA stream
# stopped: its code is in RAM only while it runs (lib/lazy.py). Part of board/stm32f4.py.
from array import array

import pyb
import stm
import uctypes
from micropython import const

# RCC_AHB1ENR, RCC_APB1ENR, RCC_APB2ENR, PWR_CR and PWR_CSR bits (RM0090)
_AHB1_BKPSRAMEN = const(1 << 18)
_AHB1_DMA2EN = const(1 << 22)
_APB1_TIM5EN = const(1 << 3)
_APB1_PWREN = const(1 << 28)
_APB2_ADC1EN = const(1 << 8)
_APB2_ADC3EN = const(1 << 10)
_PWR_DBP = const(1 << 8)
_PWR_BRE = const(1 << 9)
_PWR_BRR = const(1 << 3)
# ADC_CR2 (RM0090) = ADON | DMA | DDS | ALIGN (left: a 12-bit result << 4, the 16-bit
# scale of read_u16) | EXTSEL 0110 (TIM2_TRGO) | EXTEN 01 (rising edge); one conversion (L = 0)
_ADC_CR2 = const(0x1 | 0x100 | 0x200 | 0x800 | (6 << 24) | (1 << 28))
_ADC_CCR = const(0x04)  # ADC_CCR's offset in ADC123_COMMON (the stm module has no name for it)
_ADCPRE_DIV4 = const(1 << 16)  # the ADCs' clock: PCLK2 (84 MHz) / 4 = 21 MHz (<= 36 MHz)
_SMP_480 = const(7)  # 480 cycles: 23 us per conversion at 21 MHz, for the sensors' impedance
# DMA_SxCR (RM0090): CHSEL << 25 | PL very high | MSIZE, PSIZE 16 bit | MINC | CIRC | EN
_DMA_CR = const((3 << 16) | (1 << 13) | (1 << 11) | (1 << 10) | (1 << 8) | 1)
# the ADCs' DMA requests (RM0090, "DMA2 request mapping"): ADC1 on DMA2 stream 4 channel 0,
# ADC3 on stream 1 channel 2; MicroPython's own drivers take neither on an F405 (ports/stm32/dma.c)
_V_STREAM = const(4)
_V_CHSEL = const(0)
_I_STREAM = const(1)
_I_CHSEL = const(2)
_TIM_SMCR_ECM1_ITR0 = const(0x0007)  # TIM5: external clock mode 1 on ITR0 = TIM2's TRGO
_TIM_MMS_UPDATE = const(0x20)  # TIM2_CR2 MMS = 010: each update event is TRGO
_COUNT_SPAN = const(0x40000000)


def adc(self, pin_v, ch_v, pin_i, ch_i, rate, ring):
    pyb.Pin(pin_v, pyb.Pin.ANALOG)
    pyb.Pin(pin_i, pyb.Pin.ANALOG)
    self._ch = (ch_v, ch_i)
    self._ring = ring
    # TIM5 counts modulo a multiple of the ring, so count % ring is the slot written
    self._span = ring * (_COUNT_SPAN // ring)
    self._keep = ring - ring // 8  # handed out at most: the DMA goes on over the oldest
    self._v = array("H", bytes(2 * ring))
    self._i = array("H", bytes(2 * ring))
    self._mv_v = memoryview(self._v)
    self._mv_i = memoryview(self._i)
    self._rate = rate
    self.gaps = 0
    self.lost = 0
    self.restarts = 0
    self._timer = None
    # register addresses, computed once (each is a long int on the board)
    self._a_cnt = stm.TIM5 + stm.TIM_CNT
    self._a_ndtr_v = stm.DMA2 + 0x14 + 0x18 * _V_STREAM  # SxNDTR: 0x14 + 0x18 * x
    self._a_ndtr_i = stm.DMA2 + 0x14 + 0x18 * _I_STREAM
    start(self)


def start(self):
    m = stm.mem32
    rcc = stm.RCC
    m[rcc + stm.RCC_AHB1ENR] |= _AHB1_DMA2EN
    m[rcc + stm.RCC_APB2ENR] |= _APB2_ADC1EN | _APB2_ADC3EN
    m[rcc + stm.RCC_APB1ENR] |= _APB1_TIM5EN
    tim2 = stm.TIM2
    if self._timer is None:
        self._timer = pyb.Timer(2, freq=self._rate)  # 32-bit, on APB1: exactly 2 kHz
    m[tim2 + stm.TIM_CR2] &= ~0x70  # no TRGO while the rest is set up
    t5 = stm.TIM5
    m[t5 + stm.TIM_CR1] = 0
    m[t5 + stm.TIM_PSC] = 0
    m[t5 + stm.TIM_ARR] = self._span - 1
    m[t5 + stm.TIM_SMCR] = _TIM_SMCR_ECM1_ITR0
    m[t5 + stm.TIM_CNT] = 0
    m[t5 + stm.TIM_CR1] = 1  # CEN
    ccr = stm.ADC123_COMMON + _ADC_CCR
    m[ccr] = (m[ccr] & ~0x30000) | _ADCPRE_DIV4
    _chain(self, stm.ADC1, self._ch[0], _V_STREAM, _V_CHSEL, self._v)
    _chain(self, stm.ADC3, self._ch[1], _I_STREAM, _I_CHSEL, self._i)
    self._taken = 0  # triggers handed out (or lost), modulo the span
    m[tim2 + stm.TIM_CR2] |= _TIM_MMS_UPDATE  # go: both ADCs convert at each update


def _chain(self, adc, ch, stream, chsel, buf):
    m = stm.mem32
    s = stm.DMA2 + 0x10 + 0x18 * stream  # SxCR; NDTR, PAR, M0AR, FCR follow
    m[adc + stm.ADC_CR2] = 0
    m[s] = 0
    while m[s] & 1:  # EN reads 1 until the stream has stopped
        pass
    m[adc + stm.ADC_CR1] = 0  # 12 bits, no scan
    m[adc + stm.ADC_SMPR1] = _SMP_480 << (3 * (ch - 10))  # channels 10..18
    m[adc + stm.ADC_SQR1] = 0  # one conversion
    m[adc + stm.ADC_SQR3] = ch
    m[s + 0x08] = adc + stm.ADC_DR  # PAR
    m[s + 0x0C] = uctypes.addressof(buf)  # M0AR
    m[s + 0x04] = self._ring  # NDTR
    m[s + 0x14] = 0  # FCR: direct mode
    m[s] = (chsel << 25) | _DMA_CR
    m[adc + stm.ADC_CR2] = _ADC_CR2


def sram(self):
    m = stm.mem32
    rcc = stm.RCC
    m[rcc + stm.RCC_APB1ENR] |= _APB1_PWREN
    m[stm.PWR + stm.PWR_CR] |= _PWR_DBP
    m[rcc + stm.RCC_AHB1ENR] |= _AHB1_BKPSRAMEN
    csr = stm.PWR + stm.PWR_CSR
    m[csr] |= _PWR_BRE
    for _ in range(10000):
        if m[csr] & _PWR_BRR:
            break
    else:
        raise OSError("backup regulator not ready")
    self._base = rcc + 0x800  # BKPSRAM, 0x40024000, just above RCC
