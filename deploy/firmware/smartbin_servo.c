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
 * - An interlock (a lid, door or light-curtain switch from an input pin, D3..D8, to GND; internal
 *   pull-up, so a cut wire reads open), off until the host sends `LID ON <pin> <ch> <home_us>|HOLD`:
 *   a MOVE of the guarded channel is refused while it reads open (ERR 8), the channel then ramps to
 *   its target at LID_SLEW_US_PER_MS, and a ramp under way when it opens is stopped (back to home_us,
 *   or held where it is). `EVT LID_OPEN` / `EVT LID_CLOSED` on each debounced change.
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
#ifndef LID_SLEW_US_PER_MS
#define LID_SLEW_US_PER_MS 2 /* a guarded move ramps 1000 us in 0.5 s */
#endif

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
static uint16_t target_us[CHANNELS]; /* where a ramp is going; == pulse_us when still */

/* The interlock: off until LID ON. The pin reads high (pull-up) when the switch is open. */
static uint8_t lid_on, lid_ch, lid_bit, lid_open, lid_last;
static volatile uint8_t *lid_pin = &PIND; /* or PINB */
static uint16_t lid_home_us;      /* 0: HOLD */
static uint32_t lid_changed_at;

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

static void set_pulse(uint8_t ch, uint16_t us) {
    pulse_us[ch] = us;
    if (ch == 0)
        OCR1A = us * 2;
    else
        OCR1B = us * 2;
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

static uint8_t lid_reads_open(void) { return (*lid_pin >> lid_bit) & 1; }

/* LID ON <pin> <ch> <home_us>|HOLD, or LID OFF. Pins D3..D7 (PORTD) and D8 (PB0) are free. */
static void handle_lid(char **words, uint8_t n) {
    char out[48];
    if (n == 2 && !strcmp(words[1], "OFF")) {
        lid_on = 0;
        reply("OK LID OFF");
        return;
    }
    if (n != 5 || strcmp(words[1], "ON") || words[2][0] != 'D') {
        reply_error(2, "bad arguments");
        return;
    }
    long pin = number(words[2] + 1), ch = number(words[3]);
    long home = strcmp(words[4], "HOLD") ? number(words[4]) : 0;
    if (pin < 0 || ch < 0 || home < 0) {
        reply_error(2, "bad arguments");
        return;
    }
    if (pin < 3 || pin > 8) {
        snprintf(out, sizeof out, "no input pin %.8s", words[2]);
        reply_error(7, out);
        return;
    }
    if (ch >= CHANNELS) {
        snprintf(out, sizeof out, "no channel %ld", ch);
        reply_error(5, out);
        return;
    }
    if (strcmp(words[4], "HOLD") && (home < SERVO_MIN_US || home > SERVO_MAX_US)) { /* 0 is no HOLD */
        snprintf(out, sizeof out, "pulse %ld outside %u..%u", home, SERVO_MIN_US, SERVO_MAX_US);
        reply_error(3, out);
        return;
    }
    if (pin == 8) {
        lid_pin = &PINB;
        lid_bit = PB0;
        DDRB &= ~(1 << PB0);
        PORTB |= 1 << PB0;
    } else {
        lid_pin = &PIND;
        lid_bit = (uint8_t)pin;
        DDRD &= ~(1 << pin);
        PORTD |= 1 << pin; /* pull-up: the closed switch pulls the pin to GND; a cut wire reads open */
    }
    __asm__ __volatile__("nop\n\tnop\n\tnop"); /* let the pull-up reach the synchroniser */
    lid_ch = (uint8_t)ch;
    lid_home_us = (uint16_t)home;
    lid_open = lid_last = lid_reads_open();
    lid_changed_at = millis();
    lid_on = 1;
    reply("OK LID ON");
}

static void handle(char *line) {
    char out[48];
    char *words[6] = {0};
    uint8_t n = 0;
    for (char *w = strtok(line, " "); w && n < 6; w = strtok(NULL, " ")) words[n++] = w;
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
    if (!strcmp(cmd, "LID?")) {
        if (n != 1)
            reply_error(2, "bad arguments");
        else
            reply(!lid_on ? "OK LID OFF" : lid_open ? "OK LID OPEN" : "OK LID CLOSED");
        return;
    }
    if (!strcmp(cmd, "LID")) {
        handle_lid(words, n);
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
        uint8_t guarded = lid_on && ch == lid_ch;
        if (guarded && (lid_open || lid_reads_open())) {
            reply_error(8, "lid open");
            return;
        }
        target_us[ch] = (uint16_t)us;
        if (!guarded || !pulse_us[ch]) pulse_us[ch] = (uint16_t)us; /* unguarded, or from nowhere known */
        moved_at[ch] = millis();
        attach((uint8_t)ch, pulse_us[ch]);
        snprintf(out, sizeof out, "OK %ld %ld", ch, us);
    } else if (!strcmp(cmd, "POS")) {
        snprintf(out, sizeof out, "OK %ld %u", ch, pulse_us[ch]);
    } else {
        detach((uint8_t)ch);
        target_us[ch] = pulse_us[ch]; /* a ramp under way ends where it is */
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

/* The interlock's level must hold DEBOUNCE_MS before it counts; each change is one event. Opening
 * stops a ramp of the guarded channel: back to its home, or held where it is. */
static void poll_lid(uint32_t t) {
    if (!lid_on) return;
    uint8_t level = lid_reads_open();
    if (level != lid_last) {
        lid_last = level;
        lid_changed_at = t;
    } else if (level != lid_open && t - lid_changed_at >= DEBOUNCE_MS) {
        lid_open = level;
        if (lid_open && target_us[lid_ch] != pulse_us[lid_ch])
            target_us[lid_ch] = lid_home_us ? lid_home_us : pulse_us[lid_ch];
        reply(lid_open ? "EVT LID_OPEN" : "EVT LID_CLOSED");
    }
}

/* A guarded move ramps LID_SLEW_US_PER_MS each ms, so that it is under way long enough to stop. */
static void ramp(uint32_t t) {
    static uint32_t stepped_at;
    if (t == stepped_at) return;
    stepped_at = t;
    for (uint8_t ch = 0; ch < CHANNELS; ch++) {
        uint16_t at = pulse_us[ch], to = target_us[ch];
        if (at == to || !attached[ch]) continue;
        if (at < to)
            at = to - at > LID_SLEW_US_PER_MS ? at + LID_SLEW_US_PER_MS : to;
        else
            at = at - to > LID_SLEW_US_PER_MS ? at - LID_SLEW_US_PER_MS : to;
        set_pulse(ch, at);
        moved_at[ch] = t;
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
        poll_lid(t);
        ramp(t);
        for (uint8_t ch = 0; ch < CHANNELS; ch++)
            if (attached[ch] && t - moved_at[ch] >= HOLD_MS) detach(ch);
    }
}
