/*
 * smartbin-servo: the `line` protocol servo firmware for an ATmega328P
 * (Arduino Uno / Nano at 16 MHz). Protocol: docs/line-protocol.md.
 *
 * - Servo pulses from Timer1 in hardware (channel 0 = OC1A = pin D9,
 *   channel 1 = OC1B = pin D10), 50 Hz, 0.5 us resolution: no jitter from
 *   interrupts or the serial line.
 * - Serial input arrives by interrupt into a ring buffer; the main loop
 *   assembles lines and never blocks on a partial one.
 * - A channel detaches itself HOLD_MS after its last move (jitter, heat).
 * - Pulse widths outside SERVO_MIN_US..SERVO_MAX_US are refused.
 * - A push button from pin D2 to GND (internal pull-up), debounced, sends
 *   `EVT BUTTON` between replies when released: "sort what is on the tray
 *   now"; held LONG_PRESS_MS or more, `EVT BUTTON_LONG`: "the bins were emptied".
 *
 * Build: make (needs gcc-avr and avr-libc). Flash: make flash PORT=/dev/ttyUSB0
 */

#include <avr/interrupt.h>
#include <avr/io.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FIRMWARE_NAME "smartbin-servo"
#define FIRMWARE_VERSION "0.1.0"

#ifndef SERVO_MIN_US
#define SERVO_MIN_US 900
#endif
#ifndef SERVO_MAX_US
#define SERVO_MAX_US 2100
#endif
#define HOLD_MS 1500u
#define CHANNELS 2
#define LINE_MAX 47
#define RX_SIZE 64 /* power of two */
#define MAX_LOGGED_ERRORS 8
#define DEBOUNCE_MS 30u
#define LONG_PRESS_MS 2000u

#if (SERVO_MIN_US) < 500 || (SERVO_MAX_US) > 2500 || (SERVO_MIN_US) >= (SERVO_MAX_US)
#error "servo limits must lie within 500..2500 us"
#endif

static volatile uint8_t rx_buf[RX_SIZE];
static volatile uint8_t rx_head, rx_tail;
static volatile uint8_t uart_errors;
static volatile uint32_t now_ms;

static uint16_t pulse_us[CHANNELS];
static uint32_t moved_at[CHANNELS];
static uint8_t attached[CHANNELS];
static uint8_t error_log[MAX_LOGGED_ERRORS];
static uint8_t error_count;

ISR(USART_RX_vect) {
    uint8_t status = UCSR0A;
    uint8_t byte = UDR0;
    if (status & ((1 << FE0) | (1 << DOR0))) {
        uart_errors++;
        return;
    }
    uint8_t next = (rx_head + 1) & (RX_SIZE - 1);
    if (next == rx_tail) {
        uart_errors++; /* buffer full: the byte is lost */
        return;
    }
    rx_buf[rx_head] = byte;
    rx_head = next;
}

ISR(TIMER0_COMPA_vect) { now_ms++; }

static uint32_t millis(void) {
    uint32_t ms;
    cli();
    ms = now_ms;
    sei();
    return ms;
}

static void uart_init(void) {
    UCSR0A = 1 << U2X0;
    UBRR0 = 16; /* 115200 baud at 16 MHz with U2X (2.1% error) */
    UCSR0B = (1 << RXEN0) | (1 << TXEN0) | (1 << RXCIE0);
    UCSR0C = (1 << UCSZ01) | (1 << UCSZ00); /* 8N1 */
}

static void uart_put(char c) {
    while (!(UCSR0A & (1 << UDRE0))) {
    }
    UDR0 = c;
}

static void reply(const char *text) {
    while (*text) uart_put(*text++);
    uart_put('\n');
}

static void log_error(uint8_t code) {
    if (error_count < MAX_LOGGED_ERRORS) error_log[error_count] = code;
    if (error_count < 255) error_count++;
}

static void reply_error(uint8_t code, const char *text) {
    char line[48];
    snprintf(line, sizeof line, "ERR %u %s", code, text);
    log_error(code);
    reply(line);
}

static void timers_init(void) {
    /* Timer0: 1 kHz tick for millis(). */
    TCCR0A = 1 << WGM01;
    TCCR0B = (1 << CS01) | (1 << CS00); /* /64 */
    OCR0A = 249;
    TIMSK0 = 1 << OCIE0A;
    /* Timer1: fast PWM, TOP = ICR1, /8 -> 0.5 us ticks, 20 ms period. */
    TCCR1A = 1 << WGM11;
    TCCR1B = (1 << WGM13) | (1 << WGM12) | (1 << CS11);
    ICR1 = 39999;
}

static void attach(uint8_t ch, uint16_t us) {
    uint16_t ticks = us * 2;
    if (ch == 0) {
        OCR1A = ticks;
        DDRB |= 1 << PB1;
        TCCR1A |= 1 << COM1A1;
    } else {
        OCR1B = ticks;
        DDRB |= 1 << PB2;
        TCCR1A |= 1 << COM1B1;
    }
    attached[ch] = 1;
}

static void detach(uint8_t ch) {
    if (ch == 0) {
        TCCR1A &= ~(1 << COM1A1);
        PORTB &= ~(1 << PB1);
    } else {
        TCCR1A &= ~(1 << COM1B1);
        PORTB &= ~(1 << PB2);
    }
    attached[ch] = 0;
}

/* Parse a decimal number that fills the whole word; -1 if it is not one. */
static long number(const char *word) {
    if (!word || !*word) return -1;
    char *end;
    long value = strtol(word, &end, 10);
    return (*end || value < 0) ? -1 : value;
}

static void handle(char *line) {
    char out[48];
    char *words[4] = {0};
    uint8_t n = 0;
    for (char *w = strtok(line, " "); w && n < 4; w = strtok(NULL, " ")) words[n++] = w;
    if (n == 0) return;
    const char *cmd = words[0];

    if (!strcmp(cmd, "PING")) {
        reply(n == 1 ? "OK PONG " FIRMWARE_NAME " " FIRMWARE_VERSION : "ERR 2 bad arguments");
        return;
    }
    if (!strcmp(cmd, "ERRORS")) {
        uint8_t shown = error_count < MAX_LOGGED_ERRORS ? error_count : MAX_LOGGED_ERRORS;
        int len = snprintf(out, sizeof out, "OK %u", error_count);
        for (uint8_t i = 0; i < shown && len < (int)sizeof out - 3; i++)
            len += snprintf(out + len, sizeof out - len, " %u", error_log[i]);
        error_count = 0;
        reply(out);
        return;
    }
    if (strcmp(cmd, "MOVE") && strcmp(cmd, "POS") && strcmp(cmd, "DETACH")) {
        snprintf(out, sizeof out, "unknown command %.20s", cmd);
        reply_error(1, out);
        return;
    }
    uint8_t want = !strcmp(cmd, "MOVE") ? 3 : 2;
    long ch = number(words[1]);
    if (n != want || ch < 0) {
        reply_error(2, "bad arguments");
        return;
    }
    if (ch >= CHANNELS) {
        snprintf(out, sizeof out, "no channel %ld", ch);
        reply_error(5, out);
        return;
    }
    if (!strcmp(cmd, "MOVE")) {
        long us = number(words[2]);
        if (us < 0) {
            reply_error(2, "bad arguments");
            return;
        }
        if (us < SERVO_MIN_US || us > SERVO_MAX_US) {
            snprintf(out, sizeof out, "pulse %ld outside %u..%u", us, SERVO_MIN_US, SERVO_MAX_US);
            reply_error(3, out);
            return;
        }
        pulse_us[ch] = (uint16_t)us;
        moved_at[ch] = millis();
        attach((uint8_t)ch, (uint16_t)us);
        snprintf(out, sizeof out, "OK %ld %ld", ch, us);
    } else if (!strcmp(cmd, "POS")) {
        snprintf(out, sizeof out, "OK %ld %u", ch, pulse_us[ch]);
    } else {
        detach((uint8_t)ch);
        snprintf(out, sizeof out, "OK %ld", ch);
    }
    reply(out);
}

/* The button's level must hold DEBOUNCE_MS before it counts; a press and its release (low -> high)
 * is one event, long or short by how long it was held. */
static void poll_button(uint32_t t) {
    static uint8_t stable = 1, last = 1;
    static uint32_t changed_at, pressed_at;
    uint8_t level = (PIND >> PD2) & 1;
    if (level != last) {
        last = level;
        changed_at = t;
    } else if (level != stable && t - changed_at >= DEBOUNCE_MS) {
        stable = level;
        if (!stable) {
            pressed_at = changed_at;
        } else {
            reply(changed_at - pressed_at >= LONG_PRESS_MS ? "EVT BUTTON_LONG" : "EVT BUTTON");
        }
    }
}

int main(void) {
    char line[LINE_MAX + 1];
    uint8_t len = 0, overflow = 0;

    DDRD &= ~(1 << PD2);
    PORTD |= 1 << PD2; /* pull-up: the button pulls D2 to GND */
    uart_init();
    timers_init();
    sei();

    for (;;) {
        while (rx_tail != rx_head) {
            char c = (char)rx_buf[rx_tail];
            rx_tail = (rx_tail + 1) & (RX_SIZE - 1);
            if (c == '\r') continue;
            if (c == '\n') {
                if (overflow) {
                    reply_error(4, "line too long");
                } else {
                    line[len] = '\0';
                    handle(line);
                }
                len = 0;
                overflow = 0;
            } else if (len < LINE_MAX) {
                line[len++] = c;
            } else {
                overflow = 1;
            }
        }
        if (uart_errors) {
            cli();
            uint8_t lost = uart_errors;
            uart_errors = 0;
            sei();
            while (lost--) log_error(6);
        }
        uint32_t t = millis();
        poll_button(t);
        for (uint8_t ch = 0; ch < CHANNELS; ch++)
            if (attached[ch] && t - moved_at[ch] >= HOLD_MS) detach(ch);
    }
}
