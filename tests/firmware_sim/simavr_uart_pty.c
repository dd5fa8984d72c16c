/*
 * Run an ATmega328P firmware ELF under simavr with UART0 on a pseudo-terminal,
 * so the tests drive the real firmware through the real Python driver.
 * Prints "PTY <path>" on stdout once the pty is up, then simulates until killed.
 * A line "PRESS" on stdin presses the button on pin D2 for 100 ms (simulated time); "PRESS <ms>"
 * holds it that long.
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

/* A line on stdin asks for a button press: returns how many ms to hold it, 0 when none is waiting. */
static long press_requested(void) {
    struct pollfd fd = {.fd = 0, .events = POLLIN};
    char text[32];
    if (poll(&fd, 1, 0) <= 0) return 0;
    ssize_t n = read(0, text, sizeof text - 1);
    if (n <= 0 || strncmp(text, "PRESS", 5)) return 0;
    text[n] = '\0';
    long ms = strtol(text + 5, NULL, 10);
    return ms > 0 ? ms : 100;
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
    avr_cycle_count_t release_at = 0;
    unsigned long turns = 0;
    int state = cpu_Running;
    while (state != cpu_Done && state != cpu_Crashed) {
        state = avr_run(avr);
        long hold_ms;
        if (++turns % 20000 == 0 && (hold_ms = press_requested()) > 0) {
            avr_raise_irq(button, 0);
            release_at = avr->cycle + avr_usec_to_cycles(avr, (uint32_t)hold_ms * 1000);
        }
        if (release_at && avr->cycle >= release_at) {
            avr_raise_irq(button, 1);
            release_at = 0;
        }
    }
    uart_pty_stop(&uart);
    return state == cpu_Crashed;
}
