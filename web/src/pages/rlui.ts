// Small shared pieces of the RL page's sections: the group's types and a number input.
import { el } from "../ui";

export function num(testid: string, value: number, min: number, max: number, step: number, width = "5em"): HTMLInputElement {
  return el("input", { type: "number", value, min, max, step, style: `width:${width}`, "data-testid": testid }) as HTMLInputElement;
}

export interface Check { type: string; weight: number; score: number; status?: string; stdout?: string; stderr?: string; seconds?: number }
export interface Comp { text: string; ids: number[]; reward: number; checks: Check[] }
export interface Adv { advantages: number[]; sum: number; mean: number[]; std: number[]; batch_std: number; zero_signal: number }
export interface Group { prompt: string; chat: boolean; completions: Comp[]; rewards: number[]; advantages: Record<string, Adv>; sources: string[] }
