/*
 * Run an ATmega328P firmware ELF under simavr with UART0 on a pseudo-terminal,
 * so the tests drive the real firmware through the real Python driver.
 * Prints "PTY <path>" on stdout once the pty is up, then simulates until killed.
 * Lines on stdin work the pins:
 *   PRESS [<ms>]   press the button on pin D2 for 100 ms (or <ms>) of simulated time
 *   LID OPEN       the interlock switch on pin D3 opens (the pull-up wins: high)
 *   LID CLOSED     it closes (D3 pulled to GND)
 *   OPEN_AT <us>   open it the moment channel 0's pulse (OCR1A, pin D9) reaches <us> or more
 *   PULSE          print "PULSE <us> <on>": channel 0's pulse width and whether D9 sends it
 *
 *   cc simavr_uart_pty.c $(pkg-config --cflags --libs simavr simavrparts) -o simavr_uart_pty
 *   ./simavr_uart_pty smartbin_servo.elf
 */
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "avr_ioport.h"
#include "sim_avr.h"
#include "sim_elf.h"
#include "sim_irq.h"
#include "sim_time.h"
#include "uart_pty.h"

/* ATmega328P data-space addresses of Timer1's registers (channel 0's pulse is OCR1A / 2 us). */
#define TCCR1A_ADDR 0x80
#define OCR1AL_ADDR 0x88
#define OCR1AH_ADDR 0x89
#define COM1A1_BIT 7

static unsigned pulse_now(avr_t *avr) {
    return (avr->data[OCR1AL_ADDR] | avr->data[OCR1AH_ADDR] << 8) / 2;
}

/* The switch on D3 drives the pin whatever the firmware's pull-up says: closed = GND, open = high
 * (on the board it is the pull-up that makes an open switch, or a cut wire, read high). */
static void set_lid(avr_t *avr, avr_irq_t *lid, int open) {
    avr_ioport_external_t ext = {.name = 'D', .mask = 1 << 3, .value = open ? 1 << 3 : 0};
    avr_ioctl(avr, AVR_IOCTL_IOPORT_SET_EXTERNAL('D'), &ext);
    avr_raise_irq(lid, open);
}

/* The next whole line from stdin, without waiting; NULL when none is complete. */
static char *next_line(void) {
    static char buf[256];
    static size_t len;
    struct pollfd fd = {.fd = 0, .events = POLLIN};
    char *end = memchr(buf, '\n', len);
    if (!end && poll(&fd, 1, 0) > 0) {
        ssize_t n = read(0, buf + len, sizeof buf - 1 - len);
        if (n > 0) len += (size_t)n;
        end = memchr(buf, '\n', len);
    }
    if (!end) {
        if (len == sizeof buf - 1) len = 0; /* a line too long for anyone: dropped */
        return NULL;
    }
    static char line[256];
    size_t n = (size_t)(end - buf);
    memcpy(line, buf, n);
    line[n] = '\0';
    memmove(buf, end + 1, len - n - 1);
    len -= n + 1;
    return line;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s FIRMWARE.elf\n", argv[0]);
        return 2;
    }
    elf_firmware_t firmware;
    memset(&firmware, 0, sizeof firmware);
    if (elf_read_firmware(argv[1], &firmware)) {
        fprintf(stderr, "cannot read %s\n", argv[1]);
        return 2;
    }
    strcpy(firmware.mmcu, "atmega328p");
    firmware.frequency = 16000000;
    avr_t *avr = avr_make_mcu_by_name(firmware.mmcu);
    if (!avr) return 2;
    avr_init(avr);
    avr_load_firmware(avr, &firmware);

    static uart_pty_t uart;
    uart_pty_init(avr, &uart);
    uart_pty_connect(&uart, '0');
    printf("PTY %s\n", uart.pty.slavename);
    fflush(stdout);

    avr_irq_t *button = avr_io_getirq(avr, AVR_IOCTL_IOPORT_GETIRQ('D'), 2);
    avr_raise_irq(button, 1); /* released: the pull-up holds it high */
    avr_irq_t *lid = avr_io_getirq(avr, AVR_IOCTL_IOPORT_GETIRQ('D'), 3);
    set_lid(avr, lid, 0); /* closed: the switch holds D3 at GND */
    avr_cycle_count_t release_at = 0;
    unsigned open_at_us = 0, last_pulse = 0;
    unsigned long turns = 0;
    int state = cpu_Running;
    while (state != cpu_Done && state != cpu_Crashed) {
        state = avr_run(avr);
        char *line;
        if (++turns % 20000 == 0 && (line = next_line()) != NULL) {
            if (!strncmp(line, "PRESS", 5)) {
                long hold_ms = strtol(line + 5, NULL, 10);
                avr_raise_irq(button, 0);
                release_at = avr->cycle + avr_usec_to_cycles(avr, (uint32_t)(hold_ms > 0 ? hold_ms : 100) * 1000);
            } else if (!strcmp(line, "LID OPEN")) {
                set_lid(avr, lid, 1);
            } else if (!strcmp(line, "LID CLOSED")) {
                set_lid(avr, lid, 0);
            } else if (!strncmp(line, "OPEN_AT ", 8)) {
                open_at_us = (unsigned)strtoul(line + 8, NULL, 10);
            } else if (!strcmp(line, "PULSE")) {
                printf("PULSE %u %d\n", pulse_now(avr), (avr->data[TCCR1A_ADDR] >> COM1A1_BIT) & 1);
                fflush(stdout);
            }
        }
        /* The firmware writes OCR1A a byte at a time: a value counts once it reads the same twice. */
        unsigned pulse = pulse_now(avr);
        if (open_at_us && pulse >= open_at_us && pulse == last_pulse) {
            set_lid(avr, lid, 1);
            open_at_us = 0;
        }
        last_pulse = pulse;
        if (release_at && avr->cycle >= release_at) {
            avr_raise_irq(button, 1);
            release_at = 0;
        }
    }
    uart_pty_stop(&uart);
    return state == cpu_Crashed;
}
